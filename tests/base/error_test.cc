#include "base/error.h"

#include <gtest/gtest.h>

namespace lazymig {

TEST(Error, MessageNamesOperationContextAndErrno) {
  Error e = Error::sys("open", "/tmp/x", ENOENT);
  EXPECT_EQ(e.code, Errc::kSystem);
  EXPECT_NE(e.message().find("open: /tmp/x"), std::string::npos);
  EXPECT_NE(e.message().find("errno 2"), std::string::npos);
}

TEST(Error, FailBuildsUnexpected) {
  Result<int> r = fail(Errc::kConfig, "config", "key 'a.b' (line 3): must be a string");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kConfig);
  EXPECT_EQ(r.error().message(), "config: key 'a.b' (line 3): must be a string");
}

}  // namespace lazymig

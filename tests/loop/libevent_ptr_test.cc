// The owning handles of loop/libevent_ptr.h free what they own (LeakSanitizer in the asan
// preset sees a list whose entries were not freed).
#include "loop/libevent_ptr.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <gtest/gtest.h>

#include <string_view>

namespace lazymig::loop {
namespace {

TEST(KeyValues, HoldsAParsedQueryAndFreesItsEntries) {
  auto params = newKeyValues();
  ASSERT_EQ(evhttp_parse_query_str("force=true&reason=a%20test", params.get()), 0);
  ASSERT_NE(evhttp_find_header(params.get(), "force"), nullptr);
  EXPECT_EQ(std::string_view(evhttp_find_header(params.get(), "force")), "true");
  EXPECT_EQ(std::string_view(evhttp_find_header(params.get(), "reason")), "a test");
  EXPECT_EQ(evhttp_find_header(params.get(), "absent"), nullptr);
}

TEST(KeyValues, AnEmptyListIsFreedToo) {
  auto params = newKeyValues();
  EXPECT_EQ(params->tqh_first, nullptr);
}

TEST(EvBuffer, OwnsWhatWasAdded) {
  EvBufferPtr buf(evbuffer_new());
  ASSERT_TRUE(buf);
  std::string_view text = "{\"status\":\"ok\"}\n";
  ASSERT_EQ(evbuffer_add(buf.get(), text.data(), text.size()), 0);
  EXPECT_EQ(evbuffer_get_length(buf.get()), text.size());
}

}  // namespace
}  // namespace lazymig::loop

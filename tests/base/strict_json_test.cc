#include "base/strict_json.h"

#include <gtest/gtest.h>

namespace lazymig {
namespace {

TEST(StrictJson, RepeatedKeysAreRefusedNamingTheKey) {
  struct Case {
    const char* text;
    const char* key;
  };
  for (const auto& c :
       {Case{R"({"id": "a", "vmm_pid": 1, "vmm_pid": 2})", "'vmm_pid'"},
        Case{R"({"id": "a", "spec": {"x": 1, "y": {"z": 1, "z": 2}}})", "'spec.y.z'"},
        Case{R"([{"size": 1}, {"size": 1, "size": 2}])", "'size'"}}) {
    auto r = parseStrictJson(c.text, "the request body");
    ASSERT_FALSE(r) << c.text;
    EXPECT_NE(r.error().message().find(c.key), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("the request body"), std::string::npos);
  }
}

TEST(StrictJson, SameKeyInSiblingObjectsAndValidJsonPass) {
  auto r = parseStrictJson(R"({"a": {"k": 1}, "b": {"k": 2}, "list": [{"k": 1}, {"k": 2}]})", "x");
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ((*r)["b"]["k"], 2);
  auto bad = parseStrictJson("{\"a\": ", "x");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("not valid JSON"), std::string::npos);
}

}  // namespace
}  // namespace lazymig

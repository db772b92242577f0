#include "agent/migration_spec.h"

#include <gtest/gtest.h>

namespace lazymig::agent {

using nlohmann::json;

const std::string kToken(32, 'a');

json source() {
  return {{"id", "vm-1"},
          {"role", "source"},
          {"token", kToken},
          {"peer_identity", "spiffe://x/dst"},
          {"memory", {{"snapshot_file", "/tmp/mem"}}}};
}
json destination() {
  return {{"id", "vm-1"},
          {"role", "destination"},
          {"token", kToken},
          {"peer_identity", "spiffe://x/src"},
          {"source_address", "127.0.0.1:7443"}};
}

std::string errorOf(const json& body) {
  auto r = parseMigrationSpec(body, "/run/lazymig/vmm");
  EXPECT_FALSE(r) << body.dump();
  return r ? "" : r.error().message();
}

TEST(MigrationSpec, ParsesSourceAndDestination) {
  auto s = parseMigrationSpec(source(), "/h");
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ(std::get<SourceSpec>(*s).snapshot_file, "/tmp/mem");
  auto d = parseMigrationSpec(destination(), "/h");
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(std::get<DestinationSpec>(*d).handshake_socket, "/h/vm-1.sock");
  EXPECT_EQ(specToJson(*d)["handshake_socket"], "/h/vm-1.sock");
}

TEST(MigrationSpec, EachBadFieldIsNamed) {
  struct Case {
    json body;
    std::string field;
  };
  std::vector<Case> cases;
  auto with = [](json b, const std::string& k, json v) {
    if (v.is_null())
      b.erase(k);
    else
      b[k] = v;
    return b;
  };
  cases.push_back({json::array(), "(body)"});
  cases.push_back({with(source(), "id", nullptr), "'id'"});
  cases.push_back({with(source(), "id", "../etc"), "'id'"});
  cases.push_back({with(source(), "id", 7), "'id'"});
  cases.push_back({with(source(), "role", "sideways"), "'role'"});
  cases.push_back({with(source(), "token", "abc"), "'token'"});
  cases.push_back({with(source(), "token", std::string(32, 'z')), "'token'"});
  cases.push_back({with(source(), "peer_identity", ""), "'peer_identity'"});
  cases.push_back({with(source(), "memory", nullptr), "'memory'"});
  cases.push_back(
      {with(source(), "memory", json{{"snapshot_file", "/a"}, {"handover_socket", "/b"}}),
       "'memory'"});
  cases.push_back(
      {with(source(), "memory", json{{"snapshot_file", "relative"}}), "'memory.snapshot_file'"});
  cases.push_back({with(destination(), "source_address", nullptr), "'source_address'"});
  cases.push_back({with(destination(), "source_address", "nohost"), "'source_address'"});
  cases.push_back({with(destination(), "handshake_socket", "rel.sock"), "'handshake_socket'"});
  cases.push_back({with(destination(), "vmm_pid", -3), "'vmm_pid'"});
  cases.push_back({with(destination(), "vmm_pid", "12"), "'vmm_pid'"});
  for (const auto& c : cases) {
    auto msg = errorOf(c.body);
    EXPECT_NE(msg.find(c.field), std::string::npos) << c.body.dump() << " -> " << msg;
  }
}

TEST(MigrationSpec, IdsAreSafePathComponents) {
  EXPECT_TRUE(isValidMigrationId("vm-42.a_b"));
  EXPECT_FALSE(isValidMigrationId(""));
  EXPECT_FALSE(isValidMigrationId(".."));
  EXPECT_FALSE(isValidMigrationId("a/b"));
  EXPECT_FALSE(isValidMigrationId(std::string(129, 'a')));
}

}  // namespace lazymig::agent

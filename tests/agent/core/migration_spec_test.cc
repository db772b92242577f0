#include "agent/core/migration_spec.h"

#include <gtest/gtest.h>
#include <unistd.h>

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

json withField(json body, const std::string& key, json value) {
  body[key] = std::move(value);
  return body;
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

// Numbers that do not fit their field are refused naming it, never truncated: vmm_pid = 2^32 +
// a live pid must not become that pid, and port 99999 must not become 34463.
TEST(MigrationSpec, OutOfRangeNumbersAreRefusedNotTruncated) {
  const std::uint64_t own = static_cast<std::uint64_t>(::getpid());
  for (json pid : {json(std::uint64_t{1} << 40), json((std::uint64_t{1} << 32) + own), json(0),
                   json(-1), json(std::int64_t{-4294967296LL} + static_cast<std::int64_t>(own)),
                   json(4194304), json(1.5), json(std::uint64_t{UINT64_MAX})}) {
    auto msg = errorOf(withField(destination(), "vmm_pid", pid));
    EXPECT_NE(msg.find("'vmm_pid'"), std::string::npos) << pid.dump() << " -> " << msg;
  }
  auto ok = parseMigrationSpec(withField(destination(), "vmm_pid", own), "/run/hs");
  ASSERT_TRUE(ok) << ok.error().message();
  EXPECT_EQ(std::get<DestinationSpec>(*ok).vmm_pid, static_cast<pid_t>(own));
  for (const char* addr : {"127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:", ":7443", "127.0.0.1:7x",
                           "127.0.0.1:-1", "127.0.0.1:0000065536"}) {
    auto msg = errorOf(withField(destination(), "source_address", addr));
    EXPECT_NE(msg.find("'source_address'"), std::string::npos) << addr << " -> " << msg;
  }
  EXPECT_TRUE(
      parseMigrationSpec(withField(destination(), "source_address", "[::1]:65535"), "/run/hs"));
}

// Issue 19: pre-copy's knob, for both roles; a record without it reads back as off.
TEST(MigrationSpec, PrecopyAndItsDeadlineRoundTripAndErrorsNameTheKey) {
  for (json body : {source(), destination()}) {
    auto plain = parseMigrationSpec(body, "/h");
    ASSERT_TRUE(plain);
    EXPECT_FALSE(specToJson(*plain).contains("precopy")) << "records stay as they were";
    body["precopy"] = "rounds 4";
    body["precopy_deadline_ms"] = 1500;
    auto s = parseMigrationSpec(body, "/h");
    ASSERT_TRUE(s) << s.error().message();
    auto again = parseMigrationSpec(specToJson(*s), "/h");
    ASSERT_TRUE(again) << again.error().message();
    const PrecopyPolicy& p =
        std::visit([](const auto& x) -> const PrecopyPolicy& { return x.precopy; }, *again);
    EXPECT_EQ(p.mode, PrecopyPolicy::Mode::kRounds);
    EXPECT_EQ(p.rounds, 4u);
    EXPECT_EQ(p.deadline, std::chrono::milliseconds(1500));
  }
  EXPECT_NE(errorOf(withField(source(), "precopy", "sometimes")).find("field 'precopy'"),
            std::string::npos);
  EXPECT_NE(errorOf(withField(source(), "precopy", 3)).find("field 'precopy'"), std::string::npos);
  EXPECT_NE(errorOf(withField(destination(), "precopy_deadline_ms", 0))
                .find("field 'precopy_deadline_ms'"),
            std::string::npos);
  EXPECT_NE(errorOf(withField(source(), "precopy_deadline_ms", "soon"))
                .find("field 'precopy_deadline_ms'"),
            std::string::npos);
}

TEST(MigrationSpec, IdsAreSafePathComponents) {
  EXPECT_TRUE(isValidMigrationId("vm-42.a_b"));
  EXPECT_FALSE(isValidMigrationId(""));
  EXPECT_FALSE(isValidMigrationId(".."));
  EXPECT_FALSE(isValidMigrationId("a/b"));
  EXPECT_FALSE(isValidMigrationId(std::string(129, 'a')));
}

}  // namespace lazymig::agent

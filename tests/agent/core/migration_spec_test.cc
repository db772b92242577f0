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

TEST(MigrationSpec, IdsAreSafePathComponents) {
  EXPECT_TRUE(isValidMigrationId("vm-42.a_b"));
  EXPECT_FALSE(isValidMigrationId(""));
  EXPECT_FALSE(isValidMigrationId(".."));
  EXPECT_FALSE(isValidMigrationId("a/b"));
  EXPECT_FALSE(isValidMigrationId(std::string(129, 'a')));
}

// Issue 19: `precopy` and `precopy_deadline_ms`, the same on both roles; a record written
// with them reads back the same, and one without them (every record before pre-copy) is off.
TEST(MigrationSpec, PrecopyOnBothRolesRoundTripsAndNamesItsKeys) {
  for (const json& base : {source(), destination()}) {
    auto off = parseMigrationSpec(base, "/h");
    ASSERT_TRUE(off) << off.error().message();
    std::visit([](const auto& s) { EXPECT_FALSE(s.precopy.enabled()); }, *off);
    EXPECT_FALSE(specToJson(*off).contains("precopy"));

    auto on = parseMigrationSpec(
        withField(withField(base, "precopy", "rounds 3"), "precopy_deadline_ms", 1500), "/h");
    ASSERT_TRUE(on) << on.error().message();
    std::visit(
        [](const auto& s) {
          EXPECT_EQ(s.precopy.mode, PrecopyPolicy::Mode::kRounds);
          EXPECT_EQ(s.precopy.rounds, 3u);
          EXPECT_EQ(s.precopy.deadline, std::chrono::milliseconds(1500));
        },
        *on);
    auto again = parseMigrationSpec(specToJson(*on), "/h");
    ASSERT_TRUE(again) << again.error().message();
    EXPECT_EQ(specToJson(*again), specToJson(*on));

    for (json bad : {json("sometimes"), json("rounds 0"), json("rounds x"), json(3)}) {
      auto msg = errorOf(withField(base, "precopy", bad));
      EXPECT_NE(msg.find("'precopy'"), std::string::npos) << bad.dump() << " -> " << msg;
    }
    for (json bad : {json(0), json(-5), json("60000"), json(1.5)}) {
      auto msg = errorOf(withField(withField(base, "precopy", "auto"), "precopy_deadline_ms", bad));
      EXPECT_NE(msg.find("'precopy_deadline_ms'"), std::string::npos)
          << bad.dump() << " -> " << msg;
    }
  }
}

}  // namespace lazymig::agent

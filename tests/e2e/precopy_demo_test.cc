// `lazymig demo --precopy`: the demo's own run of pre-copy (cli/precopy_demo.h) reports its
// rounds, the downtime and the demand faults after the switch, and verifies every page while
// the source VM's vCPUs write during every round. Pure post-copy reports the same keys.
#include "cli/precopy_demo.h"
#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

TEST(PrecopyDemo, AutoReportsRoundsDowntimeAndFaultsAfterTheSwitch) {
  auto o = baseOptions();  // anon: the live source VM runs on a memfd, the destination's anon
  o.pattern = "hot";
  o.precopy = "auto";
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
  EXPECT_EQ(r->value("guest_mismatches", std::uint64_t{1}), 0u) << r->dump();

  const std::uint64_t pages = o.size / 4096;
  const nlohmann::json p = r->value("precopy", nlohmann::json::object());
  EXPECT_EQ(p.value("mode", ""), "auto") << p.dump();
  EXPECT_GE(p.value("rounds", 0), 1) << p.dump();
  ASSERT_TRUE(p.contains("pages_per_round") && p["pages_per_round"].is_array()) << p.dump();
  std::uint64_t sent = 0;
  for (const auto& n : p["pages_per_round"]) sent += n.get<std::uint64_t>();
  // Round 1 sends every page the destination lacks: at least every page that is not zero.
  const auto nonzero = static_cast<std::uint64_t>(static_cast<double>(pages) * (1 - o.zero_ratio));
  EXPECT_GE(sent, nonzero) << p.dump();
  EXPECT_EQ(p["pages_per_round"].size(), p.value("rounds", std::size_t{0})) << p.dump();
  EXPECT_TRUE(p.value("switch_reason", nlohmann::json()).is_string()) << p.dump();
  EXPECT_LE(p.value("stale_pages", pages + 1), pages) << p.dump();
  // The source VM's vCPUs wrote while the rounds ran: the verification used its stamps.
  EXPECT_GT(p.value("source_writes", std::uint64_t{0}), 0u) << p.dump();

  ASSERT_TRUE(r->value("downtime_ms", nlohmann::json()).is_number()) << r->dump();
  EXPECT_GT(r->value("downtime_ms", 0.0), 0.0) << r->dump();
  const std::uint64_t faults = r->value("demand_faults_after_switch", pages);
  EXPECT_EQ(faults, r->value("demand_faults", pages + 1)) << r->dump();
  EXPECT_LT(faults, pages) << "the pre-copied pages are not faulted in one by one: " << r->dump();
}

TEST(PrecopyDemo, PurePostcopyReportsDowntimeAndFaultsToo) {
  auto o = baseOptions();
  o.memory = "memfd";
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
  EXPECT_EQ(r->value("precopy", nlohmann::json()), nlohmann::json({{"mode", "off"}})) << r->dump();
  // A source VM that never ran counts as paused once its memory is written or handed over.
  ASSERT_TRUE(r->value("downtime_ms", nlohmann::json()).is_number()) << r->dump();
  EXPECT_GT(r->value("downtime_ms", 0.0), 0.0) << r->dump();
  EXPECT_EQ(r->value("demand_faults_after_switch", std::uint64_t{0}),
            r->value("demand_faults", std::uint64_t{1}))
      << r->dump();
}

TEST(PrecopyDemo, ABadModeIsRefusedNamingTheFlag) {
  auto o = baseOptions();
  for (const char* bad : {"sometimes", "rounds", "rounds 0", "rounds 2x", "Auto"}) {
    o.precopy = bad;
    auto ok = cli::checkDemoOptions(o);
    ASSERT_FALSE(ok) << bad;
    EXPECT_NE(ok.error().message().find("--precopy"), std::string::npos) << ok.error().message();
  }
  o.precopy = "rounds 3";
  EXPECT_TRUE(cli::checkDemoOptions(o));
  o.memory = "guest_memfd";
  EXPECT_FALSE(cli::checkDemoOptions(o)) << "the demo's live source runs on anon or memfd";
}

}  // namespace
}  // namespace lazymig::e2e

// Both agents report what a migration cost them in CPU (issue 14): cpu_seconds from their loop
// threads' own clocks, cpu_seconds_per_gib consistent with it and with the memory moved, in
// the control API, in the metrics and in the demo's report. The figures' size is the bench's.
#include <regex>

#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

using cli::DemoRun;
using cli::Side;
using namespace std::chrono_literals;

// The value of `family{node=...,role=...}` in an agent's exposition; -1 when absent.
double roleSeries(const std::string& text, const std::string& family, const std::string& role) {
  std::smatch m;
  std::regex line(family + "\\{[^}]*role=\"" + role + "\"[^}]*\\} ([0-9.e+-]+)");
  return std::regex_search(text, m, line) ? std::stod(m[1]) : -1;
}

TEST(CpuCost, BothAgentsReportTheirCpuPerGibMoved) {
  auto o = baseOptions();
  o.size = 32ull << 20;
  auto done = runToTheEnd(o);
  ASSERT_TRUE(done) << done.error().message();
  DemoRun& run = done->run;
  for (Side side : {Side::kDestination, Side::kSource}) {
    const std::string role = side == Side::kSource ? "source" : "destination";
    std::optional<nlohmann::json> m;
    ASSERT_TRUE(waitUntil(
        [&] {
          auto got = run.migration(side);
          if (got && got->value("state", "") == "completed") m = *got;
          return m.has_value();
        },
        60s))
        << role << " never completed";
    const auto moved = (*m)["progress"].value("bytes_moved", std::uint64_t{0});
    EXPECT_EQ(moved, (*m)["progress"].value("pages_total", std::uint64_t{0}) *
                         (*m)["progress"].value("page_size", std::uint64_t{0}))
        << role << ": a completed migration moved all of its memory\n"
        << m->dump();
    const double cpu = m->value("cpu_seconds", 0.0);
    EXPECT_GT(cpu, 0.0) << role << ": moving memory costs CPU\n" << m->dump();
    ASSERT_TRUE((*m)["cpu_seconds_per_gib"].is_number()) << m->dump();
    EXPECT_NEAR((*m)["cpu_seconds_per_gib"].get<double>(),
                cpu / (static_cast<double>(moved) / (1ull << 30)), 1e-9)
        << role;

    const std::string text = scrapeMetrics(run, side);
    EXPECT_NEAR(roleSeries(text, "lazymig_migration_cpu_seconds_total", role), cpu, 1e-6) << text;
    EXPECT_EQ(roleSeries(text, "lazymig_migration_moved_bytes_total", role),
              static_cast<double>(moved));
    EXPECT_EQ(roleSeries(text, "lazymig_migration_cpu_seconds_per_gib_count", role), 1);
  }
  const nlohmann::json report = run.report(done->vm, 1.0);
  for (const char* side : {"source", "destination"}) {
    EXPECT_TRUE(report["cpu_seconds"][side].is_number()) << report.dump();
    EXPECT_TRUE(report["cpu_seconds_per_gib"][side].is_number()) << report.dump();
  }
}

}  // namespace
}  // namespace lazymig::e2e

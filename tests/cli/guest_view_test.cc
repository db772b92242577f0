// The demo's guest view: the rates and degradation computed from a test VM's guest_view, and
// the SVG the plot writes.
#include "cli/demo_guest_view.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "cli/svg_plot.h"

namespace lazymig::cli {
namespace {

using json = nlohmann::json;

// A guest doing 10 pages/ms unmigrated, 6 pages/ms until the migration completes at 1000 ms,
// then 10 again until 1500 ms.
json view() {
  return json{{"start_unix_ms", 1e12},
              {"migration_completed_ms", 1000.0},
              {"progress", {{0, 0}, {500, 3000}, {1000, 6000}, {1500, 11000}}},
              {"baseline", {{"accesses", 10000}, {"progress", {{0, 0}, {1000, 10000}}}}}};
}

TEST(GuestView, RatesBeforeDuringAfterAndTheWorkLost) {
  json r = guestRateJson(view());
  EXPECT_DOUBLE_EQ(r["guest_rate"]["before"].get<double>(), 10.0);
  EXPECT_DOUBLE_EQ(r["guest_rate"]["during"].get<double>(), 6.0);
  EXPECT_DOUBLE_EQ(r["guest_rate"]["after"].get<double>(), 10.0);
  EXPECT_EQ(r["guest_rate"]["unit"], "pages/ms");
  EXPECT_DOUBLE_EQ(r["degradation"].get<double>(), 0.4);
}

TEST(GuestView, GuestThatEndsBeforeTheMigrationHasNoAfterAndNoBaselineNoDegradation) {
  json v = view();
  v["migration_completed_ms"] = 4000.0;
  v.erase("baseline");
  json r = guestRateJson(v);
  EXPECT_NEAR(r["guest_rate"]["during"].get<double>(), 11000.0 / 1500, 1e-3);
  EXPECT_TRUE(r["guest_rate"]["after"].is_null());
  EXPECT_TRUE(r["guest_rate"]["before"].is_null());
  EXPECT_TRUE(r["degradation"].is_null());
}

TEST(GuestView, PlotHasBothGuestCurvesTheRatesBelowAndTheCompletionMarker) {
  const std::string path = ::testing::TempDir() + "/guest.svg";
  std::vector<MigrationSample> samples = {
      {1e12, 0, 0}, {1e12 + 100, 50, 2000}, {1e12 + 200, 60, 5000}};
  json report{{"memory", "anon"},
              {"size_bytes", 1 << 28},
              {"pattern", "hot"},
              {"vcpus", "kvm"},
              {"page_size", 4096}};
  ASSERT_TRUE(writeGuestPlot(path, report, view(), samples));
  std::ifstream in(path);
  std::string svg{std::istreambuf_iterator<char>(in), {}};
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(svg.find("</svg>"), svg.size() - 7);
  for (const char* s : {"not migrating", "migrating", "demand faults/s", "bulk stream MiB/s",
                        "migration completed", "KVM vCPUs"}) {
    EXPECT_NE(svg.find(s), std::string::npos) << s;
  }
  // Guest curves, the fault rate and the bulk rate: four lines.
  std::size_t lines = 0;
  for (auto at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1))
    ++lines;
  EXPECT_EQ(lines, 4u);
}

TEST(GuestView, PlotToAnUnwritablePathSaysWhere) {
  auto ok = writeGuestPlot("/nonexistent-dir/x.svg", json::object(), view(), {});
  ASSERT_FALSE(ok);
  EXPECT_NE(ok.error().message().find("/nonexistent-dir/x.svg"), std::string::npos);
}

}  // namespace
}  // namespace lazymig::cli

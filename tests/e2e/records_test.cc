// A finished migration reads the same after its agent restarts: the control API serves it
// from the stored record, and `lazymig status` / `lazymig list` show its real numbers.
#include <signal.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>

#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

using cli::DemoRun;
using cli::Side;
using namespace std::chrono_literals;

// What `lazymig ARGS` prints on stdout.
std::string lazymigOutput(const std::string& args) {
  std::string out;
  std::unique_ptr<FILE, decltype(&::pclose)> p(
      ::popen((std::string(LAZYMIG_BIN_DIR) + "/lazymig " + args).c_str(), "r"), &::pclose);
  if (!p) return out;
  std::array<char, 4096> buf{};
  for (std::size_t n; (n = std::fread(buf.data(), 1, buf.size(), p.get())) > 0;)
    out.append(buf.data(), n);
  return out;
}

TEST(Records, FinishedMigrationShowsItsNumbersAfterTheAgentRestarts) {
  auto o = baseOptions();
  o.size = 16ull << 20;
  auto done = runToTheEnd(o);
  ASSERT_TRUE(done) << done.error().message();
  DemoRun& run = done->run;
  ASSERT_TRUE(waitUntil(
      [&] {
        auto m = run.migration(Side::kDestination);
        return m && m->value("state", "") == "completed";
      },
      60s));
  const nlohmann::json before = *run.migration(Side::kDestination);
  const std::uint64_t total = before["progress"].value("pages_total", std::uint64_t{0});
  ASSERT_GT(total, 0u);
  ASSERT_EQ(before["progress"].value("pages_installed", std::uint64_t{0}), total);

  run.killAgent(Side::kDestination, SIGTERM);
  ASSERT_TRUE(run.startAgent(Side::kDestination));
  auto after = run.migration(Side::kDestination);
  ASSERT_TRUE(after) << after.error().message();
  EXPECT_EQ(after->value("state", ""), "completed") << after->dump();
  EXPECT_EQ((*after)["progress"].value("pages_installed", std::uint64_t{0}), total)
      << after->dump();
  EXPECT_EQ((*after)["progress"].value("pages_remaining", std::uint64_t{1}), 0u) << after->dump();
  EXPECT_FALSE((*after)["progress"].contains("pages_done")) << "one name for the field";
  EXPECT_EQ(after->value("throughput_mib_s", 0.0), before.value("throughput_mib_s", -1.0));
  EXPECT_EQ(after->value("fault_latency_us", nlohmann::json()),
            before.value("fault_latency_us", nlohmann::json()));

  // The spec (docs/openapi.yaml) describes these objects of a real run, field by field.
  const std::string dir = run.dir() + "/";
  std::ofstream(dir + "dest-live.json") << before.dump();
  std::ofstream(dir + "dest-record.json") << after->dump();
  auto source = run.migration(Side::kSource);
  ASSERT_TRUE(source) << source.error().message();
  std::ofstream(dir + "source.json") << source->dump();
  EXPECT_EQ(std::system(("python3 " LAZYMIG_ROOT_DIR
                         "/tests/api/contract_test.py --migrations " LAZYMIG_ROOT_DIR
                         "/docs/openapi.yaml " +
                         dir + "dest-live.json " + dir + "dest-record.json " + dir + "source.json")
                            .c_str()),
            0);

  const std::string control = "--control " + run.controlEndpoint(Side::kDestination) + " ";
  const std::string pages = std::to_string(total) + " / " + std::to_string(total) + " (100.0%)";
  EXPECT_NE(lazymigOutput(control + "status " + DemoRun::kMigrationId).find(pages),
            std::string::npos);
  const std::string list = lazymigOutput(control + "list");
  EXPECT_NE(list.find(std::to_string(total) + " " +
                      std::string(10 - std::to_string(total).size(), ' ') + std::to_string(total)),
            std::string::npos)
      << list;
}

}  // namespace
}  // namespace lazymig::e2e

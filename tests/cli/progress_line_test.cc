// The live progress line: rates measured between samples, the ETA from the recent page rate,
// the run's averages once it ends, and plain lines only every `plain_every` off a terminal.
#include "cli/progress_line.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <string>

namespace lazymig::cli {
namespace {

using namespace std::chrono_literals;
using Clock = ProgressLine::Clock;

nlohmann::json sample(const std::string& state, std::uint64_t installed, std::uint64_t faults) {
  return {{"id", "vm-1"},
          {"state", state},
          {"elapsed_seconds", 20.0},
          {"throughput_mib_s", 50.0},
          {"fault_latency_us", {{"p99", 1500.0}}},
          {"progress",
           {{"pages_total", 10240},
            {"pages_installed", installed},
            {"demand_faults", faults},
            {"page_size", 4096}}}};
}

TEST(ProgressLine, RatesAndEtaComeFromTheLastTwoSamples) {
  ProgressLine line(stderr, false, 0ms);
  auto t0 = Clock::now();
  line.render(sample("running", 1024, 100), t0);
  // 2048 pages (8 MiB) and 300 faults in 2 s; 7168 pages left at 1024 pages/s.
  EXPECT_EQ(line.render(sample("running", 3072, 400), t0 + 2s),
            "vm-1 running: 3072/10240 pages (30.0%)  4 MiB/s  150 faults/s  fault p99 1.50 ms  "
            "ETA 7.0s");
}

TEST(ProgressLine, FirstSampleHasNoEtaYet) {
  ProgressLine line(stderr, false, 0ms);
  EXPECT_NE(line.render(sample("running", 10, 0), Clock::now()).find("ETA --"), std::string::npos);
}

TEST(ProgressLine, TheEndShowsTheRunsAverages) {
  ProgressLine line(stderr, false, 0ms);
  auto t0 = Clock::now();
  line.render(sample("running", 10240, 400), t0);
  EXPECT_EQ(line.render(sample("completed", 10240, 400), t0 + 1s),
            "vm-1 completed: 10240/10240 pages (100.0%)  50 MiB/s  20 faults/s  fault p99 1.50 ms  "
            "took 20s");
}

TEST(ProgressLine, OffATerminalPrintsWholeLinesEveryInterval) {
  std::unique_ptr<FILE, decltype(&std::fclose)> out(std::tmpfile(), &std::fclose);
  ASSERT_TRUE(out);
  ProgressLine line(out.get(), false, 5s);
  auto t0 = Clock::now();
  line.update(sample("running", 1, 0), t0);
  line.update(sample("running", 2, 0), t0 + 1s);  // too soon: not printed
  line.update(sample("running", 3, 0), t0 + 6s);
  line.update(sample("completed", 10240, 0), t0 + 7s);  // the end: printed however soon
  line.update(sample("completed", 10240, 0), t0 + 8s);  // ... and only once
  line.update(sample("completed", 10240, 0), t0 + 20s);
  line.finish();
  std::rewind(out.get());
  std::string text(4096, '\0');
  text.resize(std::fread(text.data(), 1, text.size(), out.get()));
  EXPECT_EQ(text.find('\r'), std::string::npos) << "no redraws off a terminal";
  EXPECT_NE(text.find("1/10240 pages"), std::string::npos) << text;
  EXPECT_EQ(text.find("2/10240 pages"), std::string::npos) << text;
  EXPECT_NE(text.find("3/10240 pages"), std::string::npos) << text;
  auto first = text.find("vm-1 completed: 10240/10240");
  ASSERT_NE(first, std::string::npos) << text;
  EXPECT_EQ(text.find("vm-1 completed", first + 1), std::string::npos) << "the end printed twice:\n"
                                                                       << text;
}

}  // namespace
}  // namespace lazymig::cli

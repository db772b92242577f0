// The recorder keeps a migration's stats and the agent's Prometheus families in step: every
// call is checked against both, the families read back from a real prometheus-cpp registry.
#include "agent/core/transfer_recorder.h"

#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <map>
#include <string>

namespace lazymig::agent {
namespace {

using metrics::Channel;
using metrics::Direction;
using metrics::FaultPath;
using metrics::PagePath;
using namespace std::chrono_literals;

// The value of one series (a counter or gauge value, or a histogram's sample count), found by
// family name and the labels beyond `node`; -1 when there is no such series.
double seriesValue(metrics::AgentMetrics& m, const std::string& family,
                   const std::map<std::string, std::string>& labels) {
  for (const auto& f : m.registry()->Collect()) {
    if (f.name != family) continue;
    for (const auto& s : f.metric) {
      std::map<std::string, std::string> have;
      for (const auto& l : s.label) {
        if (l.name != "node") have[l.name] = l.value;
      }
      if (have != labels) continue;
      switch (f.type) {
        case prometheus::MetricType::Counter:
          return s.counter.value;
        case prometheus::MetricType::Gauge:
          return s.gauge.value;
        case prometheus::MetricType::Histogram:
          return static_cast<double>(s.histogram.sample_count);
        default:
          return -1;
      }
    }
  }
  return -1;
}

class TransferRecorderTest : public ::testing::Test {
 protected:
  double value(const std::string& family, const std::map<std::string, std::string>& labels = {}) {
    return seriesValue(*metrics_, family, labels);
  }
  std::unique_ptr<metrics::AgentMetrics> metrics_ = metrics::AgentMetrics::create("node-a");
  MigrationStats stats_;
  TransferRecorder recorder_{stats_, metrics_.get()};
};

TEST_F(TransferRecorderTest, InstalledPagesByPathAgreeWithTheFamilies) {
  recorder_.pagesRemaining(100);
  recorder_.pagesInstalled(PagePath::kDemand, 3);
  recorder_.pagesInstalled(PagePath::kBulk, 64, 2);
  recorder_.pagesInstalled(PagePath::kZero, 10, 1);
  recorder_.pagesRemoved(5);

  EXPECT_EQ(stats_.demand_pages.load(), 3u);
  EXPECT_EQ(stats_.bulk_pages.load(), 64u);
  EXPECT_EQ(stats_.zero_pages.load(), 10u);
  EXPECT_EQ(stats_.removed_pages.load(), 5u);
  EXPECT_EQ(stats_.eexist_races.load(), 3u);
  EXPECT_EQ(value("lazymig_pages_total", {{"path", "demand"}}), 3);
  EXPECT_EQ(value("lazymig_pages_total", {{"path", "bulk"}}), 64);
  EXPECT_EQ(value("lazymig_pages_total", {{"path", "zero"}}), 10);
  EXPECT_EQ(value("lazymig_uffd_eexist_total"), 3);
  // 100 - 3 - 64 - 10 installed - 5 discarded; the EEXIST races were someone else's install.
  EXPECT_EQ(value("lazymig_pages_remaining"), 18);
}

TEST_F(TransferRecorderTest, WireBytesByChannelAndDirectionAgreeWithTheFamilies) {
  recorder_.wireBytes(Channel::kUrgent, Direction::kSent, 100);
  recorder_.wireBytes(Channel::kUrgent, Direction::kReceived, 4200);
  recorder_.wireBytes(Channel::kBulk, Direction::kSent, 40);
  recorder_.wireBytes(Channel::kBulk, Direction::kReceived, 266000);
  recorder_.wireBytes(Channel::kBulk, Direction::kReceived, 1000);

  EXPECT_EQ(stats_.bytes_sent.load(), 140u);
  EXPECT_EQ(stats_.bytes_received.load(), 271200u);
  const char* channels[] = {"urgent", "bulk"};
  const char* directions[] = {"sent", "received"};
  for (int c = 0; c < 2; ++c) {
    for (int d = 0; d < 2; ++d) {
      EXPECT_EQ(static_cast<double>(stats_.wire_bytes[c][d].load()),
                value("lazymig_wire_bytes_total",
                      {{"channel", channels[c]}, {"direction", directions[d]}}))
          << channels[c] << " " << directions[d];
    }
  }
  EXPECT_EQ(stats_.wire_bytes[1][1].load(), 267000u);
}

TEST_F(TransferRecorderTest, FaultLatencyByPathAgreesWithTheFamilies) {
  recorder_.faultRead();
  recorder_.faultRead();
  recorder_.faultRead();
  recorder_.faultServed(FaultPath::kNetwork, 150us);
  recorder_.faultServed(FaultPath::kLocal, 2us);
  recorder_.faultServed(FaultPath::kRaced, 90us);

  EXPECT_EQ(stats_.demand_faults.load(), 3u);
  EXPECT_EQ(stats_.fault_latency.count(), 3u);
  EXPECT_EQ(stats_.fault_latency.sum(), 242us);
  EXPECT_EQ(value("lazymig_fault_latency_seconds", {{"path", "network"}}), 1);
  EXPECT_EQ(value("lazymig_fault_latency_seconds", {{"path", "local"}}), 1);
  EXPECT_EQ(value("lazymig_fault_latency_seconds", {{"path", "raced"}}), 1);
  EXPECT_NEAR(value("lazymig_vcpu_blocked_seconds_total"), 242e-6, 1e-9);
}

TEST_F(TransferRecorderTest, FaultPhasesAgreeWithTheFamiliesAndAddUp) {
  FaultPhaseDurations phases{5us, 10us, 300us, 20us, 10us, 15us};
  recorder_.faultPhases(phases, 100us);
  recorder_.faultPhases(phases, 100us);
  EXPECT_EQ(stats_.fault_phases_total.count(), 2u);
  EXPECT_EQ(stats_.fault_phases_total.sum(), 720us);
  EXPECT_EQ(stats_.fault_phases[2].sum(), 600us);
  EXPECT_EQ(stats_.fault_source_wait_seen.sum(), 200us);
  for (auto name : metrics::kFaultPhaseNames) {
    EXPECT_EQ(value("lazymig_fault_phase_seconds", {{"phase", std::string(name)}}), 2) << name;
  }
  EXPECT_EQ(stats_.slowest_faults.slowestFirst().size(), 2u);
}

TEST_F(TransferRecorderTest, SourceServedPagesStayInTheStatsOnly) {
  recorder_.pagesRequested(2);
  recorder_.pagesServed(PagePath::kDemand, 2);
  recorder_.pagesServed(PagePath::kBulk, 64);
  recorder_.pagesServed(PagePath::kZero, 7);

  EXPECT_EQ(stats_.demand_faults.load(), 2u);
  EXPECT_EQ(stats_.served_demand_pages.load(), 2u);
  EXPECT_EQ(stats_.served_bulk_pages.load(), 64u);
  EXPECT_EQ(stats_.served_zero_pages.load(), 7u);
  // Installed pages are counted where they are installed, so a migration between two agents
  // of one fleet is not counted twice.
  EXPECT_EQ(value("lazymig_pages_total", {{"path", "bulk"}}), 0);
}

TEST_F(TransferRecorderTest, ReconnectsAndRefusalsReachTheFamilies) {
  recorder_.reconnect(Channel::kBulk);
  recorder_.refusal("token");
  EXPECT_EQ(stats_.reconnects.load(), 1u);
  EXPECT_EQ(value("lazymig_reconnects_total", {{"channel", "bulk"}}), 1);
  EXPECT_EQ(value("lazymig_reconnects_total", {{"channel", "urgent"}}), 0);
  EXPECT_EQ(value("lazymig_refusals_total", {{"reason", "token"}}), 1);
}

TEST(TransferRecorder, WithoutMetricsKeepsTheStats) {
  MigrationStats stats;
  TransferRecorder recorder(stats, nullptr);
  recorder.pagesRemaining(10);
  recorder.pagesInstalled(PagePath::kBulk, 4, 1);
  recorder.pagesRemoved(1);
  recorder.wireBytes(Channel::kBulk, Direction::kSent, 16);
  recorder.faultServed(FaultPath::kLocal, 1us);
  recorder.reconnect(Channel::kUrgent);
  recorder.refusal("flood");
  EXPECT_EQ(stats.bulk_pages.load(), 4u);
  EXPECT_EQ(stats.eexist_races.load(), 1u);
  EXPECT_EQ(stats.removed_pages.load(), 1u);
  EXPECT_EQ(stats.wire_bytes[1][0].load(), 16u);
  EXPECT_EQ(stats.fault_latency.count(), 1u);
  EXPECT_EQ(stats.reconnects.load(), 1u);
}

}  // namespace
}  // namespace lazymig::agent

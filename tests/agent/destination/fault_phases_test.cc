// The phase accounting of demand faults (agent/destination/fault_phases.h): the split adds up
// to the fault's latency exactly, each side's figures land in its own phases, and the timer
// records a fault only once the source's ServeTimes for its page arrives.
#include "agent/destination/fault_phases.h"

#include <gtest/gtest.h>

#include <numeric>

namespace lazymig::agent {
namespace {

using namespace std::chrono_literals;
using std::chrono::nanoseconds;
using Phase = metrics::FaultPhase;

nanoseconds of(const FaultPhaseDurations& d, Phase p) { return d[static_cast<std::size_t>(p)]; }
nanoseconds sum(const FaultPhaseDurations& d) {
  return std::accumulate(d.begin(), d.end(), nanoseconds(0));
}

// fault read at 0, request sent at 30us, reply read at 530us, woken at 560us.
ReplyMoments moments() {
  const std::chrono::steady_clock::time_point t0{};
  return {t0, t0 + 30us, t0 + 530us, t0 + 560us};
}

TEST(FaultPhases, EachSidesFiguresLandInItsOwnPhasesAndTheyAddUpToTheLatency) {
  // The source saw 100us of waiting and 40us of work; the kernel's floor is 60us.
  auto d = splitFaultPhases(moments(), {100us, 40us}, 60us);
  EXPECT_EQ(of(d, Phase::kDestinationWait), 30us);
  EXPECT_EQ(of(d, Phase::kRequestWire), 30us);
  EXPECT_EQ(of(d, Phase::kReplyWire), 30us);
  EXPECT_EQ(of(d, Phase::kSourceWork), 40us);
  // 500us round trip - 140us the source saw - 60us floor: 300us nobody saw, plus its 100us.
  EXPECT_EQ(of(d, Phase::kSourceWait), 400us);
  EXPECT_EQ(of(d, Phase::kInstallWake), 30us);
  EXPECT_EQ(sum(d), 560us);
}

TEST(FaultPhases, ASlowSourceShowsInTheSourcePhasesNotInTheDestinations) {
  // Same destination moments, but the source reports 480us of its own work.
  auto d = splitFaultPhases(moments(), {0us, 480us}, 60us);
  EXPECT_EQ(of(d, Phase::kSourceWork), 480us);
  EXPECT_EQ(of(d, Phase::kRequestWire) + of(d, Phase::kReplyWire), 20us);  // only 20us left
  EXPECT_EQ(of(d, Phase::kSourceWait), 0us);
  EXPECT_EQ(of(d, Phase::kInstallWake), 30us);
  EXPECT_EQ(of(d, Phase::kDestinationWait), 30us);
  EXPECT_EQ(sum(d), 560us);
}

TEST(FaultPhases, SourceFiguresBeyondTheRoundTripAreCutToIt) {
  // A confused or hostile source cannot make the phases exceed what the destination measured.
  auto d = splitFaultPhases(moments(), {10s, 10s}, 60us);
  EXPECT_EQ(of(d, Phase::kSourceWork), 500us);
  EXPECT_EQ(of(d, Phase::kSourceWait), 0us);
  EXPECT_EQ(sum(d), 560us);
  d = splitFaultPhases(moments(), {400us, 10s}, 60us);
  EXPECT_EQ(of(d, Phase::kSourceWork), 500us);
  EXPECT_EQ(sum(d), 560us);
}

TEST(FaultPhases, WithoutARoundTripFigureTheUnseenTimeIsSourceWait) {
  auto d = splitFaultPhases(moments(), {100us, 40us}, 0us);
  EXPECT_EQ(of(d, Phase::kRequestWire), 0us);
  EXPECT_EQ(of(d, Phase::kReplyWire), 0us);
  EXPECT_EQ(of(d, Phase::kSourceWait), 460us);
  EXPECT_EQ(sum(d), 560us);
}

class FaultPhaseTimerTest : public ::testing::Test {
 protected:
  MigrationStats stats_;
  FaultPhaseTimer timer_{TransferRecorder(stats_, nullptr)};
  const transport::TcpPath path_{100us, 60us};
};

TEST_F(FaultPhaseTimerTest, AFaultIsRecordedWhenItsServeTimesArrive) {
  timer_.replied(PageIndex{7}, moments());
  EXPECT_EQ(stats_.fault_phases_total.count(), 0u);
  EXPECT_EQ(timer_.awaiting(), 1u);
  timer_.serveTimes({7, 100'000, 40'000}, path_);
  EXPECT_EQ(timer_.awaiting(), 0u);
  EXPECT_EQ(stats_.fault_phases_total.count(), 1u);
  EXPECT_EQ(stats_.fault_phases_total.sum(), 560us);
  nanoseconds phases{0};
  for (const auto& h : stats_.fault_phases) {
    EXPECT_EQ(h.count(), 1u);
    phases += h.sum();
  }
  EXPECT_EQ(phases, 560us);
  EXPECT_EQ(stats_.fault_phases[static_cast<std::size_t>(Phase::kSourceWait)].sum(), 400us);
  // Of which the source saw 100us; the other 300us nobody saw.
  EXPECT_EQ(stats_.fault_source_wait_seen.sum(), 100us);
  // A ServeTimes for a page whose reply was not timed (the bulk stream won) records nothing.
  timer_.serveTimes({8, 1, 1}, path_);
  EXPECT_EQ(stats_.fault_phases_total.count(), 1u);
  // The status sums up the same: the means of the phases add up to the mean latency.
  auto j = faultPhasesJson(stats_);
  EXPECT_EQ(j["count"], 1u);
  EXPECT_DOUBLE_EQ(j["total"]["mean"].get<double>(), 560.0);
  EXPECT_DOUBLE_EQ(j["source_wait"]["mean"].get<double>(), 400.0);
  EXPECT_DOUBLE_EQ(j["source_wait_seen_by_source"]["mean"].get<double>(), 100.0);
  double means = 0;
  for (auto name : metrics::kFaultPhaseNames) means += j[std::string(name)]["mean"].get<double>();
  EXPECT_DOUBLE_EQ(means, 560.0);
  // And the slowest fault, phase by phase.
  ASSERT_EQ(j["slowest"].size(), 1u);
  EXPECT_DOUBLE_EQ(j["slowest"][0]["total"].get<double>(), 560.0);
  EXPECT_DOUBLE_EQ(j["slowest"][0]["source_wait"].get<double>(), 400.0);
  EXPECT_DOUBLE_EQ(j["slowest"][0]["install_wake"].get<double>(), 30.0);
}

TEST_F(FaultPhaseTimerTest, ASourceThatSendsNoServeTimesCostsABoundedWait) {
  // A protocol 1.1 source never sends ServeTimes: replies waiting for them stay few.
  for (std::uint64_t p = 0; p < 10000; ++p) timer_.replied(PageIndex{p}, moments());
  EXPECT_LE(timer_.awaiting(), 64u);
  EXPECT_EQ(stats_.fault_phases_total.count(), 0u);
  // A new link forgets them (their ServeTimes died with the old one).
  timer_.linkOpened();
  EXPECT_EQ(timer_.awaiting(), 0u);
}

}  // namespace
}  // namespace lazymig::agent

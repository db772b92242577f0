// The ending handshake (docs/protocol.md) with real agents killed by SIGKILL at each of its
// steps. Each agent is started with LAZYMIG_TEST_STOP_AT naming one step
// (agent/core/test_points.h): the agent that reaches it stops itself there (SIGSTOP), the test
// SIGKILLs the agent the step is about -- that one, or its peer while it waits -- and starts it
// again. Whatever the step, both sides must learn the outcome: the destination `completed` with the
// source's acknowledgement, and the source `completed` (its memory released) for good, also after a
// later restart. Invariant 4 meanwhile: the source never releases before it has the
// destination's Complete, which is why a source killed before recording it must hear it again.
#include <signal.h>

#include <cstdlib>

#include "client/control_client.h"
#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

using cli::Side;

struct EndingStep {
  const char* name;
  const char* stop_at;  // the step (LAZYMIG_TEST_STOP_AT)
  Side stops;           // the agent that reaches it
  Side killed;          // the agent SIGKILLed while `stops` is stopped there
};

std::ostream& operator<<(std::ostream& os, const EndingStep& s) { return os << s.name; }

// True once `pid` is stopped by a signal: state 'T' in /proc/<pid>/stat (after the command
// name, which may itself contain spaces and parentheses, hence the last ')').
bool isStopped(pid_t pid) {
  std::string stat = readFile("/proc/" + std::to_string(pid) + "/stat");
  auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'T';
}

std::string stateOf(const cli::DemoRun& run, Side side) {
  auto m = run.migration(side);
  return m ? m->value("state", "") : "unreachable";
}

// Both agents get the variable (each role has steps of its own); agents started again later
// do not, so the step is passed once.
Result<cli::DemoRun> prepareStoppingAt(const char* step, int give_up_after_s = 60) {
  auto o = baseOptions();
  o.size = 16ull << 20;
  o.extra_yaml =
      "migration:\n  stall_timeout_ms: 600\n"
      "  reconnect:\n    initial_backoff_ms: 20\n    max_backoff_ms: 200\n    give_up_after_s: " +
      std::to_string(give_up_after_s) + "\n";
  ::setenv("LAZYMIG_TEST_STOP_AT", step, 1);
  auto run = cli::DemoRun::prepare(o);
  ::unsetenv("LAZYMIG_TEST_STOP_AT");
  return run;
}

class EndingKilled : public ::testing::TestWithParam<EndingStep> {};

TEST_P(EndingKilled, BothSidesLearnTheOutcome) {
  const EndingStep& step = GetParam();
  auto run = prepareStoppingAt(step.stop_at);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->prepareSourceMemory());
  ASSERT_TRUE(run->createMigrations());
  ASSERT_TRUE(run->startDestinationVm());
  ASSERT_TRUE(
      waitUntil([&] { return isStopped(run->agentPid(step.stops)); }, std::chrono::seconds(60)))
      << "the " << (step.stops == Side::kSource ? "source" : "destination")
      << " agent never reached " << step.stop_at << "; see " << run->dir();
  run->killAgent(step.killed, SIGKILL);
  ASSERT_TRUE(run->startAgent(step.killed));
  if (step.stops != step.killed) run->signalAgent(step.stops, SIGCONT);

  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  EXPECT_TRUE(vm->value("verified", false)) << vm->dump();
  EXPECT_EQ(vm->value("mismatches", std::uint64_t{1}), 0u) << vm->dump();
  // The destination completes only with the source's acknowledgement, so the source has
  // recorded the outcome by then; the wait is for a destination still reconnecting.
  ASSERT_TRUE(waitUntil([&] { return stateOf(*run, Side::kDestination) == "completed"; },
                        std::chrono::seconds(30)))
      << "destination " << stateOf(*run, Side::kDestination);
  auto dst = run->migration(Side::kDestination);
  ASSERT_TRUE(dst);
  EXPECT_TRUE(dst->value("source_acknowledged", false)) << dst->dump();
  EXPECT_EQ(dst->value("reason", "?"), "") << dst->dump();
  EXPECT_EQ(stateOf(*run, Side::kSource), "completed")
      << "the source must have learnt the outcome; see " << run->logPath(Side::kSource);
  // ...for good: a later restart of the source finds it completed, not serving again.
  run->killAgent(Side::kSource, SIGKILL);
  ASSERT_TRUE(run->startAgent(Side::kSource));
  EXPECT_EQ(stateOf(*run, Side::kSource), "completed");
  if (HasFailure()) run->keepDirectory();
}

constexpr EndingStep kSteps[] = {
    // The source killed at each step of the ending...
    {"SourceBeforeCompleteIsSent", "destination.completing_persisted", Side::kDestination,
     Side::kSource},
    {"SourceAfterCompleteArrivesBeforeItIsRecorded", "source.complete_received", Side::kSource,
     Side::kSource},
    {"SourceAfterRecordingCompleteBeforeAcknowledging", "source.complete_persisted", Side::kSource,
     Side::kSource},
    {"SourceAfterAcknowledging", "source.ack_sent", Side::kSource, Side::kSource},
    {"SourceBeforeTheAcknowledgementIsRecorded", "destination.ack_received", Side::kDestination,
     Side::kSource},
    // ...and the destination around its own records of completion.
    {"DestinationBeforeRecordingCompleting", "destination.before_completing", Side::kDestination,
     Side::kDestination},
    {"DestinationAfterRecordingCompleting", "destination.completing_persisted", Side::kDestination,
     Side::kDestination},
    {"DestinationAfterSendingComplete", "destination.complete_sent", Side::kDestination,
     Side::kDestination},
    {"DestinationBeforeRecordingTheAcknowledgement", "destination.ack_received", Side::kDestination,
     Side::kDestination},
};

INSTANTIATE_TEST_SUITE_P(Steps, EndingKilled, ::testing::ValuesIn(kSteps),
                         [](const auto& step_info) { return std::string(step_info.param.name); });

// Every page is installed, then the source agent dies for good before it hears so: the
// guest is whole, so the destination never fails; it ends `completed` but says that the
// source never acknowledged (the orchestrator must confirm the source itself), after
// give_up_after_s -- or at once when the orchestrator stops waiting (DELETE).
class SourceGoneAtTheEnd : public ::testing::TestWithParam<bool> {};

TEST_P(SourceGoneAtTheEnd, DestinationCompletesSayingTheSourceNeverAcknowledged) {
  const bool deleted = GetParam();
  auto run = prepareStoppingAt("destination.completing_persisted", deleted ? 60 : 2);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->prepareSourceMemory());
  ASSERT_TRUE(run->createMigrations());
  ASSERT_TRUE(run->startDestinationVm());
  ASSERT_TRUE(waitUntil([&] { return isStopped(run->agentPid(Side::kDestination)); },
                        std::chrono::seconds(60)));
  run->killAgent(Side::kSource, SIGKILL);
  run->signalAgent(Side::kDestination, SIGCONT);
  if (deleted) {
    EXPECT_EQ(stateOf(*run, Side::kDestination), "completing");
    auto r = client::ControlClient(run->controlEndpoint(Side::kDestination))
                 .del(std::string("/v1/migrations/") + cli::DemoRun::kMigrationId);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->status, 200) << r->body;
  }
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  EXPECT_TRUE(vm->value("verified", false)) << vm->dump();
  ASSERT_TRUE(waitUntil([&] { return stateOf(*run, Side::kDestination) == "completed"; },
                        std::chrono::seconds(20)))
      << "destination " << stateOf(*run, Side::kDestination);
  auto dst = run->migration(Side::kDestination);
  ASSERT_TRUE(dst);
  EXPECT_FALSE(dst->value("source_acknowledged", true)) << dst->dump();
  const std::string reason = dst->value("reason", "");
  EXPECT_NE(reason.find("the source never acknowledged"), std::string::npos) << reason;
  EXPECT_NE(reason.find(deleted ? "the orchestrator stopped waiting" : "source"), std::string::npos)
      << reason;
  if (HasFailure()) run->keepDirectory();
}

INSTANTIATE_TEST_SUITE_P(Ending, SourceGoneAtTheEnd, ::testing::Values(false, true),
                         [](const auto& how) {
                           return std::string(how.param ? "OrchestratorDeletes" : "GivesUp");
                         });

}  // namespace
}  // namespace lazymig::e2e

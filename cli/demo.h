// A whole migration on one machine: two agents with their own certificates, a source and a
// destination test VM, every page verified. `lazymig demo` runs it; the end-to-end tests
// drive a DemoRun step by step to kill agents or cut links in the middle.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "cli/child_process.h"
#include "cli/demo_guest_view.h"
#include "cli/huge_pages.h"

namespace lazymig::cli {

// The guest memory kinds lazymig-testvm offers, in the order usage texts list them.
inline constexpr const char* kDemoMemoryKinds =
    "anon, memfd, memfd-minor, guest_memfd, hugetlb, hugetlb-shared, hugetlb-minor";

struct DemoOptions {
  std::uint64_t size = 1ull << 30;
  std::string memory = "anon";  // one of kDemoMemoryKinds
  std::string pattern = "hot";  // sequential | random | hot | write
  unsigned vcpus = 4;
  std::uint64_t accesses = 20000;
  unsigned regions = 1;
  double zero_ratio = 0.25;
  bool balloon = false;           // anon only
  bool no_uffd_register = false;  // guest_memfd: the destination VM registers no uffd range
  bool require_kvm = false;       // guest_memfd: fail rather than let a memfd stand in
  bool memfd_standin = false;     // guest_memfd: a memfd stands in even where KVM is there
  std::uint64_t seed = 42;
  int timeout_s = 600;
  bool keep = false;    // keep the working directory
  bool verbose = true;  // progress lines on stderr
  std::string bindir;   // where lazymig-agent and lazymig-testvm live; default: beside this binary
  std::string extra_yaml;  // appended to both agents' configs
  // Run each agent through this command (e.g. setpriv dropping capabilities); empty: directly.
  std::vector<std::string> agent_prefix;
  // Called with the destination migration object a few times a second while the destination
  // VM runs (runDemo only), e.g. to draw a live progress line.
  std::function<void(const nlohmann::json&)> progress;

  // The guest's own view (the destination test VM's vCPUs), kept together for the CLI:
  bool vcpus_as_threads = false;  // --vcpus-as-threads: host threads stand in for KVM vCPUs
  bool guest_baseline = true;     // run the guest again unmigrated, for guest_rate.before
  std::string plot;               // --plot FILE.svg: guest throughput over time

  // Pre-copy (cli/precopy_demo.h): the spec key's values, off | auto | rounds N. Not off: the
  // source VM runs live (its vCPUs writing) until the rounds are done and the demo pauses it.
  std::string precopy = "off";
  std::uint64_t precopy_deadline_ms = 60000;
  std::uint64_t source_writes_per_s = 2000;  // per live source vCPU; 0: as fast as it can
};

// Checks the options that lazymig-testvm would refuse, before anything starts: the memory
// kind, hugetlb sizes (multiples of 2 MiB) and the flags that fit only some kinds.
Status checkDemoOptions(const DemoOptions& options);
// Whether the source VM hands its memory fd to the agent (else it writes a snapshot file).
bool demoUsesHandover(const std::string& memory);
bool demoUsesHugetlb(const std::string& memory);

enum class Side { kSource, kDestination };

class DemoRun {
 public:
  static Result<DemoRun> prepare(DemoOptions options);
  DemoRun(DemoRun&&) = default;
  ~DemoRun();

  Status startAgent(Side side);
  // Sends `sig` and waits (up to 30 s) for the agent to exit.
  void killAgent(Side side, int sig);
  // Sends `sig` without waiting (SIGHUP: reload).
  void signalAgent(Side side, int sig) const;
  pid_t agentPid(Side side) const;
  Status prepareSourceMemory();
  // Creates both migrations; `source_address` overrides where the destination dials (a proxy).
  Status createMigrations(const std::string& source_address = "");
  // Waits until the source agent serves the guest memory (the source VM has handed it over),
  // as an orchestrator resumes the destination VM only once its source is paused and served.
  Status waitSourceServing();
  // `extra_args` go to lazymig-testvm dest after the demo's own (e.g. `--source-stamps FILE`).
  Status startDestinationVm(const std::vector<std::string>& extra_args = {});
  // The source test VM (prepareSourceMemory): a signal (SIGUSR1 pauses a live one), what it
  // printed on stdout so far, whether it exited, and where a live one writes its stamps.
  void signalSourceVm(int sig) const;
  std::string sourceVmOutput();
  bool sourceVmExited();
  std::string sourceStampsPath() const { return dir_ + "/source-stamps.json"; }
  // Waits for the destination test VM; returns its final JSON line.
  Result<nlohmann::json> waitDestinationVm();
  // True once the destination test VM has exited (verified, failed or killed).
  bool destinationVmExited();
  Result<nlohmann::json> migration(Side side) const;
  nlohmann::json report(const nlohmann::json& vm, double total_seconds);
  void stopAll();
  // Keep the working directory (logs, configs) after this run, e.g. because it failed.
  void keepDirectory() { options_.keep = true; }

  const std::string& dir() const { return dir_; }
  std::string controlEndpoint(Side side) const;
  std::string agentAddress(Side side) const;
  std::string logPath(Side side) const;
  const DemoOptions& options() const { return options_; }
  static constexpr const char* kMigrationId = "demo-vm";
  // The SAN each side's certificate carries, and the migration's one-time token (tests play
  // attackers that know some of these).
  static std::string identity(Side side);
  const std::string& token() const { return token_; }

 private:
  explicit DemoRun(DemoOptions options) : options_(std::move(options)) {}
  // cli/demo_agents.cc: each agent on a free port below the ephemeral range, started again on
  // another when its port was taken before it bound it.
  Status startAgents();
  Status writePki();
  Status writeConfig(Side side);
  Result<nlohmann::json> call(Side side, const std::string& method, const std::string& path,
                              const std::string& body = "") const;
  void say(const std::string& line) const;

  // Declared first so that it is destroyed last, after the VMs holding huge pages are gone.
  HugePageReservation huge_pages_;
  DemoOptions options_;
  std::string dir_;
  std::string token_;
  std::uint16_t ports_[2] = {0, 0};
  std::optional<ChildProcess> agents_[2];
  std::optional<ChildProcess> source_vm_;
  std::optional<ChildProcess> dest_vm_;
  std::chrono::steady_clock::time_point started_;
  // The destination's counters while its test VM runs (a pointer: DemoRun moves, it does not).
  std::unique_ptr<MigrationSampler> sampler_;
  std::vector<MigrationSample> samples_;
};

// Runs the whole demo; prints a summary to stderr and returns the report (last stdout line).
Result<nlohmann::json> runDemo(const DemoOptions& options);

}  // namespace lazymig::cli

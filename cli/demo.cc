#include "cli/demo.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "cli/precopy_demo.h"
#include "sys/kvm.h"
#include "sys/memory_fd.h"
#include "sys/unique_fd.h"

namespace lazymig::cli {
namespace {

std::string randomHex(std::size_t bytes) {
  std::random_device rd;
  std::string out;
  const char* hex = "0123456789abcdef";
  for (std::size_t i = 0; i < bytes; ++i) {
    unsigned v = rd() & 0xff;
    out += hex[v >> 4];
    out += hex[v & 15];
  }
  return out;
}

// Both agents' CPU for this migration (their loops' own clocks, from the control API), per GiB
// moved beside the raw seconds: bench/run.sh reads it against lazymig-floors' CPU floor.
nlohmann::json agentCpuJson(const Result<nlohmann::json>& source,
                            const Result<nlohmann::json>& destination) {
  auto field = [](const Result<nlohmann::json>& m, const char* key) {
    return m && m->contains(key) ? (*m)[key] : nlohmann::json(nullptr);
  };
  return {{"cpu_seconds",
           {{"source", field(source, "cpu_seconds")},
            {"destination", field(destination, "cpu_seconds")}}},
          {"cpu_seconds_per_gib",
           {{"source", field(source, "cpu_seconds_per_gib")},
            {"destination", field(destination, "cpu_seconds_per_gib")}}}};
}

std::string selfDir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "." : p.parent_path().string();
}

}  // namespace

Status checkDemoOptions(const DemoOptions& o) {
  static const char* const kinds[] = {"anon",    "memfd",          "memfd-minor",  "guest_memfd",
                                      "hugetlb", "hugetlb-shared", "hugetlb-minor"};
  if (std::find(std::begin(kinds), std::end(kinds), o.memory) == std::end(kinds)) {
    return fail(Errc::kInvalidArgument, "--memory",
                std::string("must be one of ") + kDemoMemoryKinds + ", got '" + o.memory + "'");
  }
  if (demoUsesHugetlb(o.memory) && (o.size == 0 || o.size % kHugePage != 0)) {
    return fail(Errc::kInvalidArgument, "--size",
                "must be a multiple of 2 MiB for --memory " + o.memory + " (2 MiB pages), got " +
                    std::to_string(o.size) + " bytes");
  }
  if (o.balloon && o.memory != "anon") {
    return fail(Errc::kInvalidArgument, "--balloon", "needs --memory anon, got " + o.memory);
  }
  if (o.no_uffd_register && o.memory != "guest_memfd") {
    return fail(Errc::kInvalidArgument, "--no-uffd-register", "needs --memory guest_memfd");
  }
  if (o.require_kvm && o.memory != "guest_memfd") {
    return fail(Errc::kInvalidArgument, "--require-kvm", "needs --memory guest_memfd");
  }
  if (o.memfd_standin && o.memory != "guest_memfd") {
    return fail(Errc::kInvalidArgument, "--memfd-standin", "needs --memory guest_memfd");
  }
  if (o.memfd_standin && o.require_kvm) {
    return fail(Errc::kInvalidArgument, "--memfd-standin", "contradicts --require-kvm");
  }
  return checkDemoPrecopy(o);
}

bool demoUsesHandover(const std::string& memory) { return memory != "anon" && memory != "hugetlb"; }

bool demoUsesHugetlb(const std::string& memory) {
  return memory == "hugetlb" || memory == "hugetlb-shared" || memory == "hugetlb-minor";
}

Result<DemoRun> DemoRun::prepare(DemoOptions options) {
  if (options.bindir.empty()) options.bindir = selfDir();
  for (const char* bin : {"lazymig-agent", "lazymig-testvm"}) {
    if (::access((options.bindir + "/" + bin).c_str(), X_OK) != 0) {
      return fail(Errc::kNotFound, "demo",
                  options.bindir + "/" + bin + " is missing: build it first");
    }
  }
  if (auto ok = checkDemoOptions(options); !ok) return std::unexpected(ok.error());
  if (options.require_kvm) {
    // Both test VMs would exit on it; say so before anything starts.
    if (auto vm = sys::KvmVm::open(); !vm) {
      return fail(Errc::kUnsupported, "--require-kvm", "no guest_memfd: " + vm.error().message());
    }
  }
  DemoRun run(std::move(options));
  if (demoUsesHugetlb(run.options_.memory)) {
    // Both VMs hold the whole guest in 2 MiB pages: the source until the migration ends.
    std::uint64_t pages = 2 * (run.options_.size / kHugePage) + kSpareHugePages;
    auto reserved = HugePageReservation::ensureFree(pages, run.options_.verbose);
    if (!reserved) return std::unexpected(reserved.error());
    run.huge_pages_ = std::move(*reserved);
  }
  char tmpl[] = "/tmp/lazymig-demo-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return failSys("mkdtemp");
  run.dir_ = tmpl;
  run.token_ = randomHex(32);
  if (auto ok = run.writePki(); !ok) return std::unexpected(ok.error());
  if (auto ok = run.startAgents(); !ok) return std::unexpected(ok.error());
  run.started_ = std::chrono::steady_clock::now();
  return run;
}

DemoRun::~DemoRun() {
  stopAll();
  if (!options_.keep && !dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

void DemoRun::say(const std::string& line) const {
  if (options_.verbose) std::fprintf(stderr, "demo: %s\n", line.c_str());
}

Result<nlohmann::json> DemoRun::migration(Side s) const {
  return call(s, "GET", std::string("/v1/migrations/") + kMigrationId);
}

Status DemoRun::prepareSourceMemory() {
  const auto& o = options_;
  const std::string memory = demoSourceMemory(o);
  std::vector<std::string> argv = {o.bindir + "/lazymig-testvm",
                                   "source",
                                   "--memory",
                                   memory,
                                   "--size",
                                   std::to_string(o.size),
                                   "--seed",
                                   std::to_string(o.seed),
                                   "--zero-ratio",
                                   std::to_string(o.zero_ratio),
                                   "--regions",
                                   std::to_string(o.regions)};
  if (o.require_kvm) argv.push_back("--require-kvm");
  if (o.memfd_standin) argv.push_back("--memfd-standin");
  const bool handover = demoUsesHandover(memory);
  if (handover) {
    argv.insert(argv.end(), {"--handover-socket", dir_ + "/source-vmm.sock"});
    const auto running = liveSourceArgs(o, sourceStampsPath());  // else paused: --hold
    argv.insert(argv.end(), running.begin(), running.end());
  } else {
    argv.insert(argv.end(), {"--snapshot-file", dir_ + "/guest.mem"});
  }
  auto child = ChildProcess::spawn(argv, dir_ + "/source-vm.log", true);
  if (!child) return std::unexpected(child.error());
  source_vm_.emplace(std::move(*child));
  if (handover) return {};  // it hands the memory over once the migration exists
  say("source VM: writing the snapshot memory file");
  auto st = source_vm_->wait(std::chrono::seconds(o.timeout_s));
  if (!st || *st != 0) {
    return fail(
        Errc::kState, "source test VM",
        (st ? describeStatus(*st) : std::string("timed out")) + "; see " + dir_ + "/source-vm.log");
  }
  return {};
}

Status DemoRun::createMigrations(const std::string& source_address) {
  nlohmann::json src{{"id", kMigrationId},
                     {"role", "source"},
                     {"token", token_},
                     {"peer_identity", identity(Side::kDestination)}};
  if (demoUsesHandover(demoSourceMemory(options_))) {
    src["memory"] = nlohmann::json{{"handover_socket", dir_ + "/source-vmm.sock"}};
  } else {
    src["memory"] = nlohmann::json{{"snapshot_file", dir_ + "/guest.mem"}};
    // A snapshot file does not say its page size; the handover's mappings do.
    if (demoUsesHugetlb(options_.memory)) src["memory"]["page_size"] = kHugePage;
  }
  src.update(demoPrecopySpec(options_));
  if (auto r = call(Side::kSource, "POST", "/v1/migrations", src.dump()); !r)
    return std::unexpected(r.error());
  nlohmann::json dst{
      {"id", kMigrationId},
      {"role", "destination"},
      {"token", token_},
      {"peer_identity", identity(Side::kSource)},
      {"source_address", source_address.empty() ? agentAddress(Side::kSource) : source_address},
      {"handshake_socket", dir_ + "/destination-vmm/" + kMigrationId + ".sock"}};
  dst.update(demoPrecopySpec(options_));
  started_ = std::chrono::steady_clock::now();
  if (auto r = call(Side::kDestination, "POST", "/v1/migrations", dst.dump()); !r)
    return std::unexpected(r.error());
  return {};
}

Status DemoRun::waitSourceServing() {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(options_.timeout_s);
  for (;;) {
    auto m = migration(Side::kSource);
    if (!m) return std::unexpected(m.error());
    const std::string state = m->value("state", "");
    if (state == "serving") return {};
    if (state != "waiting_for_memory") {
      return fail(Errc::kState, "source migration",
                  state + " before serving: " + m->value("reason", "") + "; see " + dir_ +
                      "/source.log and " + dir_ + "/source-vm.log");
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return fail(Errc::kTimeout, "source migration",
                  "the source VM did not hand its memory over; see " + dir_ + "/source-vm.log");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

Status DemoRun::startDestinationVm(const std::vector<std::string>& extra_args) {
  const auto& o = options_;
  std::vector<std::string> argv = {o.bindir + "/lazymig-testvm",
                                   "dest",
                                   "--memory",
                                   o.memory,
                                   "--size",
                                   std::to_string(o.size),
                                   "--seed",
                                   std::to_string(o.seed),
                                   "--zero-ratio",
                                   std::to_string(o.zero_ratio),
                                   "--regions",
                                   std::to_string(o.regions),
                                   "--handshake-socket",
                                   dir_ + "/destination-vmm/" + kMigrationId + ".sock",
                                   "--vcpus",
                                   std::to_string(o.vcpus),
                                   "--pattern",
                                   o.pattern,
                                   "--accesses",
                                   std::to_string(o.accesses),
                                   "--control",
                                   controlEndpoint(Side::kDestination),
                                   "--migration",
                                   kMigrationId,
                                   "--timeout-s",
                                   std::to_string(o.timeout_s)};
  if (o.balloon) argv.push_back("--balloon");
  if (o.no_uffd_register) argv.push_back("--no-uffd-register");
  if (o.require_kvm) argv.push_back("--require-kvm");
  if (o.memfd_standin) argv.push_back("--memfd-standin");
  if (o.vcpus_as_threads) argv.push_back("--vcpus-as-threads");
  if (o.guest_baseline) argv.push_back("--baseline");
  if (demoPrecopy(o)) argv.insert(argv.end(), {"--source-stamps", sourceStampsPath()});
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  auto child = ChildProcess::spawn(argv, dir_ + "/destination-vm.log", true);
  if (!child) return std::unexpected(child.error());
  dest_vm_.emplace(std::move(*child));
  sampler_ = std::make_unique<MigrationSampler>();
  sampler_->start(controlEndpoint(Side::kDestination), kMigrationId, std::chrono::milliseconds(50));
  say("destination VM resumed; its vCPUs fault while pages arrive");
  return {};
}

Result<nlohmann::json> DemoRun::waitDestinationVm() {
  if (!dest_vm_) return fail(Errc::kState, "destination test VM", "not started");
  auto st = dest_vm_->wait(std::chrono::seconds(options_.timeout_s + 30));
  if (sampler_) samples_ = sampler_->stop();
  if (!st) {
    dest_vm_->stop(std::chrono::milliseconds(0));
    return fail(Errc::kTimeout, "destination test VM", "still running after the timeout; killed");
  }
  const std::string& out = dest_vm_->output();
  auto nl = out.find_last_of('\n', out.size() >= 2 ? out.size() - 2 : 0);
  std::string last = out.substr(nl == std::string::npos ? 0 : nl + 1);
  auto j = nlohmann::json::parse(last, nullptr, false);
  if (j.is_discarded()) {
    return fail(Errc::kState, "destination test VM",
                describeStatus(*st) + ", no result; see " + dir_ + "/destination-vm.log");
  }
  return j;
}

void DemoRun::signalSourceVm(int sig) const {
  if (source_vm_) source_vm_->signal(sig);
}

std::string DemoRun::sourceVmOutput() { return source_vm_ ? source_vm_->output() : ""; }

bool DemoRun::sourceVmExited() {
  return source_vm_ && source_vm_->wait(std::chrono::milliseconds(0)).has_value();
}

bool DemoRun::destinationVmExited() {
  return dest_vm_ && dest_vm_->wait(std::chrono::milliseconds(0)).has_value();
}

nlohmann::json DemoRun::report(const nlohmann::json& vm, double total_seconds) {
  auto dst = migration(Side::kDestination);
  auto src = migration(Side::kSource);
  // The source completes when the destination's Complete reaches it, a moment after the
  // destination (and its test VM) finished: give it that moment, as an orchestrator would.
  auto final_state = [](const Result<nlohmann::json>& m) {
    std::string s = m ? m->value("state", "") : "";
    return s == "completed" || s == "failed" || s == "cancelled";
  };
  for (int i = 0; i < 500 && final_state(dst) && !final_state(src); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    src = migration(Side::kSource);
  }
  nlohmann::json d = dst ? *dst : nlohmann::json::object();
  nlohmann::json p = d.value("progress", nlohmann::json::object());
  std::uint64_t pages = vm.value("pages", std::uint64_t{0});
  double mib = static_cast<double>(options_.size) / (1 << 20);
  nlohmann::json out{
      {"verified", vm.value("verified", false) && d.value("state", "") == "completed"},
      {"pages", pages},
      {"mismatches", vm.value("mismatches", pages)},
      {"demand_faults", p.value("demand_faults", 0)},
      {"demand_pages", p.value("demand_pages", 0)},
      {"bulk_pages", p.value("bulk_pages", 0)},
      {"zero_pages", p.value("zero_pages", 0)},
      {"removed_pages", p.value("removed_pages", 0)},
      {"eexist_races", p.value("eexist_races", 0)},
      {"reconnects", p.value("reconnects", 0)},
      {"fault_latency_us", d.value("fault_latency_us", nlohmann::json::object())},
      // Where the network-served faults' time went, per phase (docs/performance.md).
      {"fault_phases_us", d.value("fault_phases_us", nlohmann::json::object())},
      {"vcpu_access_latency_us", vm.value("faulting_latency_us", nlohmann::json::object())},
      // Both distributions whole, for a CDF (agent: histogram, ~3%; test VM: exact samples).
      {"fault_latency_cdf_us", d.value("fault_latency_cdf_us", nlohmann::json::array())},
      {"vcpu_stall_cdf_us", vm.value("faulting_latency_cdf_us", nlohmann::json::array())},
      {"guest_writes", vm.value("guest_writes", 0)},
      {"vcpus", vm.value("vcpus", "threads")},
      {"vcpus_threads_because", vm.value("threads_because", nlohmann::json(nullptr))},
      {"memslot_backing", vm.value("memslot_backing", nlohmann::json(nullptr))},
      {"guest_checked_reads", vm.value("guest_checked_reads", 0)},
      {"guest_mismatches", vm.value("guest_mismatches", 0)},
      {"total_seconds", total_seconds},
      {"throughput_mib_s", total_seconds > 0 ? mib / total_seconds : 0.0},
      {"memory", options_.memory},
      {"page_size", vm.value("page_size", nlohmann::json(nullptr))},
      {"guest_memfd_backing", vm.value("guest_memfd_backing", nlohmann::json(nullptr))},
      {"uffd_registered", vm.value("uffd_registered", nlohmann::json(nullptr))},
      {"fault_requests", vm.value("fault_requests", 0)},
      {"fault_replies", vm.value("fault_replies", 0)},
      {"bitmap_bits_set", vm.value("bitmap_bits_set", 0)},
      {"pattern", options_.pattern},
      {"size_bytes", options_.size},
      {"population_path", d.value("population_path", nlohmann::json(""))},
      {"source_state", src ? src->value("state", "") : "unknown"},
      {"destination_state", d.value("state", "unknown")},
      {"destination_reason", d.value("reason", "")}};
  const nlohmann::json view = vm.value("guest_view", nlohmann::json::object());
  out.update(guestRateJson(view));
  out.update(agentCpuJson(src, dst));
  out.update(precopyReportJson(options_, src, d, vm, sourceVmOutput()));
  // The share of the vCPUs' time spent waiting in accesses that faulted: unlike the rate, it
  // does not depend on how much CPU the host gives the guest meanwhile.
  const double vcpu_seconds = vm.value("workload_seconds", 0.0) * options_.vcpus;
  out["vcpu_stall_share"] =
      vcpu_seconds > 0
          ? nlohmann::json(std::round(vm.value("faulting_seconds", 0.0) / vcpu_seconds * 1000) /
                           1000)
          : nlohmann::json(nullptr);
  if (!options_.plot.empty()) {
    if (auto ok = writeGuestPlot(options_.plot, out, view, samples_); !ok) {
      std::fprintf(stderr, "demo: %s\n", ok.error().message().c_str());
    } else {
      out["plot"] = options_.plot;
    }
  }
  return out;
}

void DemoRun::stopAll() {
  if (sampler_) sampler_->stop();
  if (dest_vm_) dest_vm_->stop(std::chrono::milliseconds(0));
  // Signal everything first, then wait: the agents' shutdowns overlap instead of adding up.
  for (auto& a : agents_) {
    if (a) a->signal(SIGTERM);
  }
  if (source_vm_) source_vm_->signal(SIGTERM);
  for (auto& a : agents_) {
    if (a) a->stop(std::chrono::seconds(5));
  }
  if (source_vm_) source_vm_->stop(std::chrono::seconds(2));
}

Result<nlohmann::json> runDemo(const DemoOptions& options) {
  auto run = DemoRun::prepare(options);
  if (!run) {
    std::fprintf(stderr, "demo: FAILED: %s\n", run.error().message().c_str());
    return std::unexpected(run.error());
  }
  auto failWith = [&](const Error& e) -> Result<nlohmann::json> {
    run->stopAll();
    std::fprintf(stderr, "demo: FAILED: %s\ndemo: logs kept in %s\n", e.message().c_str(),
                 run->dir().c_str());
    run->keepDirectory();
    return std::unexpected(e);
  };
  std::fprintf(stderr, "demo: two agents up (source %s, destination %s), working in %s\n",
               run->agentAddress(Side::kSource).c_str(),
               run->agentAddress(Side::kDestination).c_str(), run->dir().c_str());
  if (auto ok = run->prepareSourceMemory(); !ok) return failWith(ok.error());
  if (auto ok = run->createMigrations(); !ok) return failWith(ok.error());
  // With pre-copy the source VM runs until the rounds are done and the demo pauses it.
  if (auto ok = demoPrecopy(options) ? switchLiveSource(*run) : run->waitSourceServing(); !ok)
    return failWith(ok.error());
  auto t0 = std::chrono::steady_clock::now();
  if (auto ok = run->startDestinationVm(); !ok) return failWith(ok.error());
  if (options.progress) {
    // Samples for the live line while the VM runs; waitDestinationVm's own deadline follows.
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(options.timeout_s + 30);
    while (!run->destinationVmExited() && std::chrono::steady_clock::now() < until) {
      if (auto m = run->migration(Side::kDestination)) options.progress(*m);
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  }
  auto vm = run->waitDestinationVm();
  if (!vm) return failWith(vm.error());
  auto dst = run->migration(Side::kDestination);
  double total = dst ? dst->value("elapsed_seconds", 0.0) : 0.0;
  if (total <= 0)
    total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto report = run->report(*vm, total);
  if (!report.value("verified", false)) {
    run->keepDirectory();
    std::fprintf(stderr, "demo: logs kept in %s\n", run->dir().c_str());
  }
  run->stopAll();
  return report;
}

}  // namespace lazymig::cli

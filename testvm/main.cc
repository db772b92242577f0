// lazymig-testvm: a stand-in VMM for lazymig's tests, demo and benchmarks. It plays
// Firecracker's part on both hosts: on the source it fills guest memory with a known pattern
// and writes a snapshot memory file or hands its memory fd to the agent; on the destination it
// hands the agent a uffd (plus the memfd, or the guest_memfd and its userfault bitmap) with
// Firecracker's handshake, runs vCPU threads on memory that is still arriving -- asking for
// guest_memfd pages with FaultRequests, as KVM userfault makes Firecracker do -- waits for the
// migration to complete, and verifies every page.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/latency_histogram.h"
#include "base/tool_main.h"
#include "client/control_client.h"
#include "sys/memory_fd.h"
#include "sys/uffd.h"
#include "sys/unix_socket.h"
#include "testvm/fault_channel.h"
#include "testvm/guest_memory.h"
#include "testvm/live_source.h"
#include "testvm/pattern.h"
#include "testvm/uffd_setup.h"
#include "testvm/userfault_bitmap.h"
#include "testvm/vcpus.h"
#include "testvm/workload.h"
#include "vmm/handshake.h"

using namespace lazymig;
using namespace lazymig::testvm;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kSynopsis =
    "usage:\n"
    "  lazymig-testvm source --memory KIND --size SIZE [--seed N] [--zero-ratio R] [--regions N]\n"
    "                        [--require-kvm | --memfd-standin]\n"
    "                        (--snapshot-file PATH | --handover-socket PATH [--hold]\n"
    "                         | --handover-socket PATH --live [--live-vcpus N]\n"
    "                           [--live-writes-per-s N] [--stamps-file PATH])\n"
    "  lazymig-testvm dest   --memory KIND --size SIZE [--seed N] [--zero-ratio R] [--regions N]\n"
    "                        [--require-kvm | --memfd-standin] [--no-uffd-register]\n"
    "                        --handshake-socket PATH [--vcpus N]\n"
    "                        [--pattern sequential|random|hot|write] [--accesses N] [--balloon]\n"
    "                        [--vcpus-as-threads] [--baseline] [--source-stamps PATH]\n"
    "                        --control ENDPOINT --migration ID [--timeout-s N]\n";
constexpr const char* kDetails =
    "\n"
    "KIND (default anon), and what dest hands the agent:\n"
    "  anon            private anonymous memory           1 fd [uffd], MISSING\n"
    "  memfd           a memfd, MAP_SHARED                1 fd [uffd], MISSING\n"
    "  memfd-minor     a memfd, MAP_SHARED                2 fds [uffd, memfd], MISSING|MINOR\n"
    "  guest_memfd     a guest_memfd from /dev/kvm        3 fds [uffd, guest_memfd, userfault\n"
    "                  (MMAP|INIT_SHARED), MAP_SHARED     bitmap], MISSING|MINOR where the kernel\n"
    "                                                     allows it, and FaultRequests on the\n"
    "                                                     handshake socket\n"
    "  hugetlb         private anonymous 2 MiB pages      1 fd [uffd], MISSING\n"
    "  hugetlb-shared  a hugetlbfs memfd (2 MiB pages),   1 fd [uffd], MISSING\n"
    "                  MAP_SHARED\n"
    "  hugetlb-minor   the same hugetlbfs memfd           2 fds [uffd, memfd], MISSING|MINOR\n"
    "hugetlb kinds describe 2 MiB pages in the handshake: --size must be a multiple of 2 MiB, and\n"
    "the huge pages must be free (/proc/sys/vm/nr_hugepages).\n"
    "source: --snapshot-file for every KIND; --handover-socket hands the memory fd itself to the\n"
    "agent (one fd), for memfd, memfd-minor, guest_memfd, hugetlb-shared and hugetlb-minor.\n"
    "--live             source: the VM keeps running (pre-copy): --live-vcpus threads (default 2)\n"
    "                   write stamps, nine in ten into the hot set, --live-writes-per-s each (0,\n"
    "                   the default: as fast as they can); the handover adds a write-protect\n"
    "                   uffd (UFFD_FEATURE_WP_ASYNC) and /proc/self/pagemap: 3 fds [memory, uffd,\n"
    "                   pagemap]. SIGUSR1 pauses the VM (the orchestrator's pause): the vCPUs "
    "stop,\n"
    "                   a second JSON line reports what they wrote, --stamps-file gets the "
    "stamps;\n"
    "                   the memory is held until SIGTERM\n"
    "--source-stamps    dest: the stamps file of a --live source: its pages are expected stamped\n"
    "--require-kvm      guest_memfd: exit 2 when /dev/kvm cannot give a guest_memfd, instead of\n"
    "                   letting a memfd stand in (same handshake, bitmap and FaultRequests)\n"
    "--memfd-standin    guest_memfd: let a memfd stand in even where /dev/kvm gives a "
    "guest_memfd;\n"
    "                   unlike a guest_memfd on most kernels, it takes uffd registration, so\n"
    "                   vCPU faults arrive both as uffd events and as FaultRequests\n"
    "--no-uffd-register guest_memfd: do not register the guest memory with the uffd, as on\n"
    "                   kernels that refuse it on a guest_memfd; vCPU faults go by FaultRequest\n"
    "--balloon          anon only: discard pages while the workload runs (MADV_DONTNEED)\n"
    "dest runs the guest on KVM vCPUs (one thread each in KVM_RUN executing the built-in guest\n"
    "program, guest memory mapped by memslots) wherever /dev/kvm can run a guest, else on host\n"
    "threads standing in for vCPUs; its JSON says which (\"vcpus\": \"kvm\" or \"threads\").\n"
    "--vcpus-as-threads dest: host threads stand in for the vCPUs even where KVM runs guests\n"
    "--baseline         dest: once verified, run the same workload again on the memory now all\n"
    "                   present, as the guest runs when not migrating (guest_view.baseline)\n";

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "lazymig-testvm: %s\n%s(lazymig-testvm --help describes KIND and the flags)\n",
               why.c_str(), kSynopsis);
  std::exit(2);
}

[[noreturn]] void die(const std::string& why, int code = 2) {
  std::fprintf(stderr, "lazymig-testvm: %s\n", why.c_str());
  std::exit(code);
}

std::uint64_t parseSize(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  double n = std::strtod(v.c_str(), &end);
  std::string unit = end;
  std::uint64_t mult = 1;
  if (unit == "KiB" || unit == "K" || unit == "k")
    mult = 1ull << 10;
  else if (unit == "MiB" || unit == "M")
    mult = 1ull << 20;
  else if (unit == "GiB" || unit == "G")
    mult = 1ull << 30;
  else if (!unit.empty())
    usage(flag + ": unknown unit '" + unit + "' (use KiB, MiB or GiB)");
  if (end == v.c_str() || n <= 0) usage(flag + ": expected a size like 256MiB, got '" + v + "'");
  return static_cast<std::uint64_t>(n * static_cast<double>(mult));
}

struct Flags {
  std::map<std::string, std::string> values;
  std::string get(const std::string& k, const std::string& def = "") const {
    auto it = values.find(k);
    return it == values.end() ? def : it->second;
  }
  bool has(const std::string& k) const { return values.count(k) != 0; }
  std::uint64_t number(const std::string& k, std::uint64_t def) const {
    if (!has(k)) return def;
    const std::string text = get(k);  // strtoull's end pointer points into it
    char* end = nullptr;
    auto v = std::strtoull(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0') usage(k + ": expected a number, got '" + text + "'");
    return v;
  }
};

Flags parseFlags(int argc, char** argv, const std::vector<std::string>& valued,
                 const std::vector<std::string>& switches) {
  Flags f;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("%s%s", kSynopsis, kDetails);
      std::exit(0);
    }
    if (std::find(switches.begin(), switches.end(), a) != switches.end()) {
      f.values[a] = "1";
    } else if (std::find(valued.begin(), valued.end(), a) != valued.end()) {
      if (i + 1 >= argc) usage(a + " needs a value");
      f.values[a] = argv[++i];
    } else {
      usage("unknown flag '" + a + "'");
    }
  }
  return f;
}

MemoryKind parseMemory(const Flags& f) {
  auto kind = parseMemoryKind(f.get("--memory", "anon"));
  if (!kind) usage(kind.error().message());
  for (const char* flag : {"--require-kvm", "--memfd-standin"}) {
    if (f.has(flag) && *kind != MemoryKind::kGuestMemfd) {
      usage(std::string(flag) + " needs --memory guest_memfd");
    }
  }
  if (f.has("--require-kvm") && f.has("--memfd-standin")) {
    usage("give at most one of --require-kvm and --memfd-standin");
  }
  return *kind;
}

// Creates the guest memory or exits: 2 with the reason when it cannot be had (no free huge
// pages, --require-kvm without KVM). Says once when a memfd stands in for the guest_memfd.
GuestMemory createMemory(const Flags& f, MemoryKind kind, std::uint64_t size) {
  GuestMemoryOptions options;
  options.require_kvm = f.has("--require-kvm");
  options.memfd_standin = f.has("--memfd-standin");
  auto mem =
      GuestMemory::create(kind, size, static_cast<unsigned>(f.number("--regions", 1)), options);
  if (!mem) die(mem.error().message());
  if (options.memfd_standin) {
    std::fprintf(stderr,
                 "lazymig-testvm: a memfd stands in for the guest_memfd (--memfd-standin)\n");
  } else if (!mem->standInReason().empty()) {
    std::fprintf(stderr,
                 "lazymig-testvm: /dev/kvm unavailable (%s); a memfd stands in for the "
                 "guest_memfd (same handshake, bitmap and FaultRequest protocol)\n",
                 mem->standInReason().c_str());
  }
  return std::move(*mem);
}

// The memory description both roles print in their final JSON.
void describeMemory(nlohmann::ordered_json& out, const GuestMemory& mem) {
  out["memory"] = memoryKindName(mem.kind());
  out["page_size"] = mem.pageSize();
  out["guest_memfd_backing"] = mem.guestMemfdBacking().empty()
                                   ? nlohmann::ordered_json(nullptr)
                                   : nlohmann::ordered_json(mem.guestMemfdBacking());
}

Pattern parsePattern(const Flags& f) {
  Pattern p;
  p.seed = f.number("--seed", 42);
  if (f.has("--zero-ratio")) {
    p.zero_ratio = std::strtod(f.get("--zero-ratio").c_str(), nullptr);
    if (p.zero_ratio < 0 || p.zero_ratio > 1) usage("--zero-ratio must be from 0 to 1");
  }
  return p;
}

Result<sys::UnixSocket> connectWithRetry(const std::string& path, std::chrono::seconds patience) {
  auto deadline = Clock::now() + patience;
  for (;;) {
    auto s = sys::UnixSocket::connect(path);
    if (s || Clock::now() > deadline) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

int sourceMain(int argc, char** argv) {
  Flags f =
      parseFlags(argc, argv,
                 {"--memory", "--size", "--seed", "--zero-ratio", "--regions", "--snapshot-file",
                  "--handover-socket", "--live-vcpus", "--live-writes-per-s", "--stamps-file"},
                 {"--hold", "--require-kvm", "--memfd-standin", "--live"});
  if (!f.has("--size")) usage("--size is required");
  MemoryKind kind = parseMemory(f);
  Pattern pattern = parsePattern(f);
  std::uint64_t size = parseSize("--size", f.get("--size"));
  if (f.has("--snapshot-file") == f.has("--handover-socket")) {
    usage("give exactly one of --snapshot-file and --handover-socket");
  }
  if (f.has("--handover-socket") && !hasMemoryFd(kind)) {
    usage(std::string("--handover-socket needs memory in a file descriptor (--memory memfd, "
                      "memfd-minor, guest_memfd, hugetlb-shared or hugetlb-minor); for --memory ") +
          memoryKindName(kind) + " use --snapshot-file");
  }
  const bool live = f.has("--live");
  if (live && !f.has("--handover-socket")) usage("--live needs --handover-socket");
  if (live && f.has("--hold")) usage("--live holds the memory anyway; drop --hold");
  for (const char* flag : {"--live-vcpus", "--live-writes-per-s", "--stamps-file"}) {
    if (f.has(flag) && !live) usage(std::string(flag) + " needs --live");
  }
  auto t0 = Clock::now();
  GuestMemory mem = createMemory(f, kind, size);
  std::uint64_t zero = 0;
  for (std::uint64_t p = 0; p < mem.pageCount(); ++p) {
    pattern.fillPage(p, std::span(mem.page(p), kPageSize));
    zero += pattern.isZeroPage(p);
  }
  if (f.has("--snapshot-file")) {
    auto fd = sys::openFile(f.get("--snapshot-file"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (!fd) die(fd.error().message());
    for (std::uint64_t p = 0; p < mem.pageCount(); ++p) {
      if (pattern.isZeroPage(p)) continue;  // leave a hole: the file reads as zeros there
      if (auto ok = sys::pwriteAll(fd->get(), mem.page(p), kPageSize, p * kPageSize); !ok)
        die(ok.error().message());
    }
    if (::ftruncate(fd->get(), static_cast<off_t>(size)) != 0)
      die("ftruncate: " + std::string(std::strerror(errno)));
  }
  double fill = std::chrono::duration<double>(Clock::now() - t0).count();
  nlohmann::ordered_json out{
      {"role", "source"}, {"pages", mem.pageCount()}, {"zero_pages", zero}, {"bytes", size}};
  describeMemory(out, mem);
  out["fill_seconds"] = std::round(fill * 1000) / 1000;
  if (live) {
    LiveSourceOptions options;
    options.writes.vcpus = static_cast<unsigned>(f.number("--live-vcpus", 2));
    options.writes.seed = pattern.seed;
    options.writes.writes_per_s = f.number("--live-writes-per-s", 0);
    options.stamps_file = f.get("--stamps-file");
    return runLiveSource(
        mem, [&] { return connectWithRetry(f.get("--handover-socket"), std::chrono::seconds(10)); },
        options, out);
  }
  if (f.has("--handover-socket")) {
    auto sock = connectWithRetry(f.get("--handover-socket"), std::chrono::seconds(10));
    if (!sock) die("handover: " + sock.error().message());
    // The classic handover: one fd, the guest memory itself, and the regions' layout in it.
    auto regions = mem.mappings();
    for (auto& r : regions) {
      r.gpa_start.reset();
      r.is_guest_memfd = false;
    }
    int fds[] = {mem.memfd().get()};
    if (auto ok = vmm::sendHandshake(*sock, regions, fds); !ok) die(ok.error().message());
    std::fprintf(stderr, "lazymig-testvm: memory handed over on %s\n",
                 f.get("--handover-socket").c_str());
  }
  // This VM never runs: it is paused from the moment its memory is written or handed over.
  out["paused_unix_ms"] = unixNowMs();
  std::printf("%s\n", out.dump().c_str());
  std::fflush(stdout);
  if (f.has("--hold")) {
    // A paused source VM keeps its memory until the orchestrator ends it.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    int sig;
    sigwait(&set, &sig);
  }
  return 0;
}

double percentileUs(std::vector<std::uint64_t>& v, double q) {
  if (v.empty()) return 0;
  std::size_t k =
      std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size() - 1)));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return static_cast<double>(v[k]) / 1000.0;
}

nlohmann::json latencyJson(std::vector<std::uint64_t> v) {
  double mx = v.empty() ? 0 : static_cast<double>(*std::max_element(v.begin(), v.end())) / 1000.0;
  return {{"p50", percentileUs(v, 0.5)}, {"p99", percentileUs(v, 0.99)}, {"max", mx}};
}

// The whole distribution at the agent's CDF quantiles, each an exact sample (the same rank
// as percentileUs); empty without samples.
nlohmann::json latencyCdfJson(std::vector<std::uint64_t> v) {
  std::sort(v.begin(), v.end());
  nlohmann::json cdf = nlohmann::json::array();
  if (v.empty()) return cdf;
  for (double q : kLatencyCdfQuantiles) {
    auto k = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
    cdf.push_back({{"q", q}, {"us", static_cast<double>(v[k]) / 1000.0}});
  }
  return cdf;
}

// Polls the destination agent until the migration is final; returns its state.
std::string waitForMigration(const std::string& endpoint, const std::string& id,
                             std::chrono::seconds timeout, std::string& reason) {
  client::ControlClient c(endpoint, std::chrono::seconds(5));
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto r = c.get("/v1/migrations/" + id);
    if (r && r->status == 200) {
      auto j = nlohmann::json::parse(r->body, nullptr, false);
      std::string state = j.is_object() ? j.value("state", "") : "";
      if (state == "completed" || state == "failed" || state == "cancelled") {
        reason = j.value("reason", "");
        return state;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return "timeout";
}

// Watches the migration from the start: if it fails, vCPUs blocked in faults the agent will
// never answer would keep the workload from ever finishing, so the process leaves from here.
std::thread watchMigration(const Flags& f, std::atomic<bool>& completed,
                           Clock::time_point& completed_at) {
  return std::thread([&f, &completed, &completed_at] {
    std::string reason;
    std::string state =
        waitForMigration(f.get("--control"), f.get("--migration"),
                         std::chrono::seconds(f.number("--timeout-s", 600)), reason);
    if (state == "completed") {
      completed_at = Clock::now();  // read only after join
      completed = true;
      return;
    }
    std::fprintf(stderr, "lazymig-testvm: migration %s%s%s\n", state.c_str(),
                 reason.empty() ? "" : ": ", reason.c_str());
    std::printf("{\"role\":\"dest\",\"verified\":false,\"state\":\"%s\"}\n", state.c_str());
    std::fflush(stdout);
    std::_Exit(state == "timeout" ? 4 : 3);
  });
}

[[noreturn]] void dieWithResult(const std::string& state, const std::string& why, int code) {
  std::fprintf(stderr, "lazymig-testvm: %s\n", why.c_str());
  nlohmann::ordered_json out{{"role", "dest"}, {"verified", false}, {"state", state}};
  if (!why.empty()) out["error"] = why;
  std::printf("%s\n", out.dump().c_str());
  std::fflush(stdout);
  std::_Exit(code);
}

// The destination's verdict and the workload's numbers, as its last stdout line starts.
nlohmann::ordered_json destResult(const VerifyResult& v, const WorkloadResult& work, double wait,
                                  bool verified, std::uint64_t faulting_ns) {
  std::vector<std::uint64_t> faulting;
  for (auto ns : work.latencies_ns) {
    if (ns > faulting_ns) faulting.push_back(ns);
  }
  nlohmann::ordered_json out{
      {"role", "dest"},
      {"verified", verified},
      {"pages", v.pages},
      {"mismatches", v.mismatches},
      {"first_mismatches", nlohmann::json::array()},
      {"accesses", work.accesses},
      {"guest_writes", work.writes},
      {"ballooned_pages", work.ballooned_pages},
      {"access_latency_us", latencyJson(work.latencies_ns)},
      {"faulting_accesses", faulting.size()},
      {"faulting_latency_us", latencyJson(faulting)},
      {"faulting_latency_cdf_us", latencyCdfJson(faulting)},
      {"faulting_seconds",
       static_cast<double>(std::accumulate(faulting.begin(), faulting.end(), std::uint64_t{0})) /
           1e9},
      {"workload_seconds", work.seconds},
      {"wait_seconds", wait},
      {"guest_checked_reads", work.guest_checked_reads},
      {"guest_mismatches", work.guest_mismatches},
      {"guest_mismatch_pages", work.guest_mismatch_pages}};
  for (auto [page, off] : v.first_mismatches)
    out["first_mismatches"].push_back({{"page", page}, {"offset", off}});
  return out;
}

int destMain(int argc, char** argv) {
  Flags f = parseFlags(
      argc, argv,
      {"--memory", "--size", "--seed", "--zero-ratio", "--regions", "--handshake-socket", "--vcpus",
       "--pattern", "--accesses", "--control", "--migration", "--timeout-s", "--source-stamps"},
      {"--balloon", "--require-kvm", "--memfd-standin", "--no-uffd-register", "--vcpus-as-threads",
       "--baseline"});
  for (const char* req : {"--size", "--handshake-socket", "--control", "--migration"}) {
    if (!f.has(req)) usage(std::string(req) + " is required");
  }
  MemoryKind kind = parseMemory(f);
  Pattern pattern = parsePattern(f);
  auto access = parseAccessPattern(f.get("--pattern", "hot"));
  if (!access) usage(access.error().message());
  if (f.has("--balloon") && kind != MemoryKind::kAnonymous) {
    usage(std::string("--balloon needs --memory anon, got ") + memoryKindName(kind));
  }
  if (f.has("--no-uffd-register") && kind != MemoryKind::kGuestMemfd) {
    usage("--no-uffd-register needs --memory guest_memfd");
  }
  GuestMemory mem = createMemory(f, kind, parseSize("--size", f.get("--size")));
  const bool guest_memfd = kind == MemoryKind::kGuestMemfd;
  std::optional<UserfaultBitmap> bitmap;
  if (guest_memfd) {
    auto b = UserfaultBitmap::create(mem.pageCount());
    if (!b) die(b.error().message());
    bitmap.emplace(std::move(*b));
  }
  auto uffd = sys::Uffd::open(uffdFeatures(kind));
  if (!uffd) die(uffd.error().message());
  bool registered = false;
  if (!f.has("--no-uffd-register")) {
    auto r = registerRegions(*uffd, mem);
    if (!r) die(r.error().message());
    registered = *r;
  }
  WorkloadOptions wo;
  wo.vcpus = static_cast<unsigned>(f.number("--vcpus", 4));
  wo.pattern = *access;
  wo.accesses = f.number("--accesses", 20000);
  wo.balloon = f.has("--balloon");
  wo.seed = pattern.seed;
  wo.zero_ratio = pattern.zero_ratio;
  if (wo.vcpus == 0) usage("--vcpus must be at least 1");
  // Set up before the handshake: the agent serves a VM that is ready to run.
  auto chosen = Vcpus::choose(mem, bitmap ? &*bitmap : nullptr, wo, f.has("--vcpus-as-threads"));
  if (!chosen) die("KVM guest: " + chosen.error().message());
  Vcpus vcpus = std::move(*chosen);
  // The handshake socket stays open for the whole run, as Firecracker never closes it.
  auto sock = connectWithRetry(f.get("--handshake-socket"), std::chrono::seconds(10));
  if (!sock) die("handshake: " + sock.error().message());
  std::vector<int> fds = {uffd->pollFd()};
  if (isMinorMode(kind)) fds.push_back(mem.memfd().get());
  if (guest_memfd) fds.insert(fds.end(), {mem.memfd().get(), bitmap->fd().get()});
  if (auto ok = vmm::sendHandshake(*sock, mem.mappings(), fds); !ok) die(ok.error().message());

  std::unique_ptr<FaultChannel> channel;
  if (guest_memfd) {
    auto c = FaultChannel::start(*sock, mem, *bitmap, [](const std::string& why) {
      dieWithResult("fault_protocol_error", "guest_memfd protocol: " + why, 2);
    });
    if (!c) die(c.error().message());
    channel = std::move(*c);
  }

  std::atomic<bool> completed{false};
  Clock::time_point completed_at;
  std::thread watcher = watchMigration(f, completed, completed_at);

  const auto workload_start = Clock::now();
  const auto workload_start_wall = std::chrono::system_clock::now();
  auto work = vcpus.run(channel.get());
  if (!work) dieWithResult("vcpu_failed", work.error().message(), 2);
  auto t_wait = Clock::now();
  watcher.join();
  double wait = std::chrono::duration<double>(Clock::now() - t_wait).count();
  if (!completed) return 4;
  if (f.has("--source-stamps")) {
    // The source guest's writes before its pause, under any the destination guest made since.
    auto source = readStampsFile(f.get("--source-stamps"));
    if (!source) dieWithResult("bad_source_stamps", source.error().message(), 2);
    work->stamps.merge(*source);
  }
  VerifyResult v = verifyMemory(mem, pattern, *work);
  // Every page the handler populated has its bit cleared; one still set was never populated.
  std::uint64_t bits_set = bitmap ? bitmap->countSet() : 0;
  if (channel) channel->stop();
  const bool verified = v.mismatches == 0 && bits_set == 0 && work->guest_mismatches == 0;
  nlohmann::ordered_json out = destResult(v, *work, wait, verified, vcpus.faultingThresholdNs());
  vcpus.describe(out);
  describeMemory(out, mem);
  out["uffd_registered"] = registered;
  out["fault_requests"] = channel ? channel->requests() : 0;
  out["fault_replies"] = channel ? channel->replies() : 0;
  out["bitmap_bits_set"] = bits_set;
  std::fprintf(
      stderr, "lazymig-testvm: %llu pages verified, %llu mismatches, %llu guest writes kept\n",
      static_cast<unsigned long long>(v.pages), static_cast<unsigned long long>(v.mismatches),
      static_cast<unsigned long long>(work->stamps.size()));
  if (work->guest_mismatches != 0) {
    std::fprintf(stderr, "lazymig-testvm: the guest itself found %llu pages not as written\n",
                 static_cast<unsigned long long>(work->guest_mismatches));
  }
  if (bits_set != 0) {
    std::fprintf(stderr,
                 "lazymig-testvm: %llu userfault bitmap bits still set after the migration "
                 "completed: those pages were never populated\n",
                 static_cast<unsigned long long>(bits_set));
  }
  std::optional<WorkloadResult> baseline;
  if (f.has("--baseline")) {
    // The same guest again on memory now all present: the guest as it runs when no migration
    // is going on, the measure of what the migration cost it.
    auto again = vcpus.runBaseline();
    if (!again) dieWithResult("vcpu_failed", "baseline: " + again.error().message(), 2);
    baseline = std::move(*again);
  }
  using Ms = std::chrono::duration<double, std::milli>;
  out["guest_view"] = guestViewJson(*work, baseline ? &*baseline : nullptr,
                                    Ms(workload_start_wall.time_since_epoch()).count(),
                                    Ms(completed_at - workload_start).count());
  std::printf("%s\n", out.dump().c_str());
  std::fflush(stdout);
  return verified ? 0 : 1;
}

}  // namespace

static int run(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) usage("missing command");
  std::string cmd = argv[1];
  if (cmd == "source") return sourceMain(argc, argv);
  if (cmd == "dest") return destMain(argc, argv);
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::printf("%s%s", kSynopsis, kDetails);
    return 0;
  }
  usage("unknown command '" + cmd + "'");
}

int main(int argc, char** argv) {
  return lazymig::runToolMain("lazymig-testvm", 2, [&] { return run(argc, argv); });
}

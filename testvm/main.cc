// lazymig-testvm: a stand-in VMM for lazymig's tests, demo and benchmarks. It plays
// Firecracker's part on both hosts: on the source it fills guest memory with a known pattern
// and writes a snapshot memory file or hands a memfd to the agent; on the destination it
// hands the agent a uffd with Firecracker's handshake, runs vCPU threads on memory that is
// still arriving, waits for the migration to complete, and verifies every page.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "client/control_client.h"
#include "sys/memory_fd.h"
#include "sys/uffd.h"
#include "sys/unix_socket.h"
#include "testvm/guest_memory.h"
#include "testvm/pattern.h"
#include "testvm/workload.h"
#include "vmm/handshake.h"

using namespace lazymig;
using namespace lazymig::testvm;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kUsage =
    "usage:\n"
    "  lazymig-testvm source --memory anon|memfd --size SIZE [--seed N] [--zero-ratio R] "
    "[--regions N]\n"
    "                        (--snapshot-file PATH | --handover-socket PATH [--hold])\n"
    "  lazymig-testvm dest   --memory anon|memfd --size SIZE [--seed N] [--zero-ratio R] "
    "[--regions N]\n"
    "                        --handshake-socket PATH [--vcpus N] [--pattern "
    "sequential|random|hot|write]\n"
    "                        [--accesses N] [--balloon] --control ENDPOINT --migration ID "
    "[--timeout-s N]\n";

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "lazymig-testvm: %s\n%s", why.c_str(), kUsage);
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
  std::string m = f.get("--memory", "anon");
  if (m == "anon") return MemoryKind::kAnonymous;
  if (m == "memfd") return MemoryKind::kMemfd;
  usage("--memory must be anon or memfd, got '" + m + "'");
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
  Flags f = parseFlags(argc, argv,
                       {"--memory", "--size", "--seed", "--zero-ratio", "--regions",
                        "--snapshot-file", "--handover-socket"},
                       {"--hold"});
  if (!f.has("--size")) usage("--size is required");
  MemoryKind kind = parseMemory(f);
  Pattern pattern = parsePattern(f);
  std::uint64_t size = parseSize("--size", f.get("--size"));
  if (f.has("--snapshot-file") == f.has("--handover-socket")) {
    usage("give exactly one of --snapshot-file and --handover-socket");
  }
  if (f.has("--handover-socket") && kind != MemoryKind::kMemfd)
    usage("--handover-socket needs --memory memfd");
  auto t0 = Clock::now();
  auto mem = GuestMemory::create(kind, size, static_cast<unsigned>(f.number("--regions", 1)));
  if (!mem) die(mem.error().message());
  std::uint64_t zero = 0;
  for (std::uint64_t p = 0; p < mem->pageCount(); ++p) {
    pattern.fillPage(p, std::span(mem->page(p), kPageSize));
    zero += pattern.isZeroPage(p);
  }
  if (f.has("--snapshot-file")) {
    auto fd = sys::openFile(f.get("--snapshot-file"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (!fd) die(fd.error().message());
    for (std::uint64_t p = 0; p < mem->pageCount(); ++p) {
      if (pattern.isZeroPage(p)) continue;  // leave a hole: the file reads as zeros there
      if (auto ok = sys::pwriteAll(fd->get(), mem->page(p), kPageSize, p * kPageSize); !ok)
        die(ok.error().message());
    }
    if (::ftruncate(fd->get(), static_cast<off_t>(size)) != 0)
      die("ftruncate: " + std::string(std::strerror(errno)));
  }
  double fill = std::chrono::duration<double>(Clock::now() - t0).count();
  if (f.has("--handover-socket")) {
    auto sock = connectWithRetry(f.get("--handover-socket"), std::chrono::seconds(10));
    if (!sock) die("handover: " + sock.error().message());
    int fds[] = {mem->memfd().get()};
    if (auto ok = vmm::sendHandshake(*sock, mem->mappings(), fds); !ok) die(ok.error().message());
    std::fprintf(stderr, "lazymig-testvm: memory handed over on %s\n",
                 f.get("--handover-socket").c_str());
  }
  std::printf(
      "{\"role\":\"source\",\"pages\":%llu,\"zero_pages\":%llu,\"bytes\":%llu,\"fill_seconds\":%."
      "3f}\n",
      static_cast<unsigned long long>(mem->pageCount()), static_cast<unsigned long long>(zero),
      static_cast<unsigned long long>(size), fill);
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

int destMain(int argc, char** argv) {
  Flags f =
      parseFlags(argc, argv,
                 {"--memory", "--size", "--seed", "--zero-ratio", "--regions", "--handshake-socket",
                  "--vcpus", "--pattern", "--accesses", "--control", "--migration", "--timeout-s"},
                 {"--balloon"});
  for (const char* req : {"--size", "--handshake-socket", "--control", "--migration"}) {
    if (!f.has(req)) usage(std::string(req) + " is required");
  }
  MemoryKind kind = parseMemory(f);
  Pattern pattern = parsePattern(f);
  auto access = parseAccessPattern(f.get("--pattern", "hot"));
  if (!access) usage(access.error().message());
  if (f.has("--balloon") && kind != MemoryKind::kAnonymous) usage("--balloon needs --memory anon");
  auto mem = GuestMemory::create(kind, parseSize("--size", f.get("--size")),
                                 static_cast<unsigned>(f.number("--regions", 1)));
  if (!mem) die(mem.error().message());
  std::uint64_t features =
      UFFD_FEATURE_EVENT_REMOVE | (kind == MemoryKind::kMemfd ? UFFD_FEATURE_MISSING_SHMEM : 0);
  auto uffd = sys::Uffd::open(features);
  if (!uffd) die(uffd.error().message());
  for (const auto& r : mem->mappings()) {
    auto ok = uffd->registerRange(HostAddr{r.base_host_virt_addr}, Bytes{r.size},
                                  sys::RegisterMode::kMissing);
    if (!ok) die(ok.error().message());
  }
  auto sock = connectWithRetry(f.get("--handshake-socket"), std::chrono::seconds(10));
  if (!sock) die("handshake: " + sock.error().message());
  int fds[] = {uffd->pollFd()};
  if (auto ok = vmm::sendHandshake(*sock, mem->mappings(), fds); !ok) die(ok.error().message());

  // Watch the migration from the start: if it fails, vCPUs blocked in faults the agent will
  // never answer would keep the workload from ever finishing, so leave from here.
  std::atomic<bool> completed{false};
  auto t_start = Clock::now();
  std::thread watcher([&] {
    std::string reason;
    std::string state =
        waitForMigration(f.get("--control"), f.get("--migration"),
                         std::chrono::seconds(f.number("--timeout-s", 600)), reason);
    if (state == "completed") {
      completed = true;
      return;
    }
    std::fprintf(stderr, "lazymig-testvm: migration %s%s%s\n", state.c_str(),
                 reason.empty() ? "" : ": ", reason.c_str());
    std::printf("{\"role\":\"dest\",\"verified\":false,\"state\":\"%s\"}\n", state.c_str());
    std::fflush(stdout);
    std::_Exit(state == "timeout" ? 4 : 3);
  });

  WorkloadOptions wo;
  wo.vcpus = static_cast<unsigned>(f.number("--vcpus", 4));
  wo.pattern = *access;
  wo.accesses = f.number("--accesses", 20000);
  wo.balloon = f.has("--balloon");
  wo.seed = pattern.seed;
  WorkloadResult work = runWorkload(*mem, wo);
  auto t_wait = Clock::now();
  watcher.join();
  double wait = std::chrono::duration<double>(Clock::now() - t_wait).count();
  (void)t_start;
  if (!completed) return 4;
  VerifyResult v = verifyMemory(*mem, pattern, work);
  std::vector<std::uint64_t> faulting;
  for (auto ns : work.latencies_ns) {
    if (ns > 5000) faulting.push_back(ns);
  }
  nlohmann::json out{{"role", "dest"},
                     {"verified", v.mismatches == 0},
                     {"pages", v.pages},
                     {"mismatches", v.mismatches},
                     {"first_mismatches", nlohmann::json::array()},
                     {"accesses", work.accesses},
                     {"guest_writes", work.writes},
                     {"ballooned_pages", work.ballooned_pages},
                     {"access_latency_us", latencyJson(work.latencies_ns)},
                     {"faulting_accesses", faulting.size()},
                     {"faulting_latency_us", latencyJson(faulting)},
                     {"workload_seconds", work.seconds},
                     {"wait_seconds", wait}};
  for (auto [page, off] : v.first_mismatches)
    out["first_mismatches"].push_back({{"page", page}, {"offset", off}});
  std::fprintf(
      stderr, "lazymig-testvm: %llu pages verified, %llu mismatches, %llu guest writes kept\n",
      static_cast<unsigned long long>(v.pages), static_cast<unsigned long long>(v.mismatches),
      static_cast<unsigned long long>(work.stamps.size()));
  std::printf("%s\n", out.dump().c_str());
  std::fflush(stdout);
  return v.mismatches == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) usage("missing command");
  std::string cmd = argv[1];
  if (cmd == "source") return sourceMain(argc, argv);
  if (cmd == "dest") return destMain(argc, argv);
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::printf("%s", kUsage);
    return 0;
  }
  usage("unknown command '" + cmd + "'");
}

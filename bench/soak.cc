// lazymig-soak: a sequence of migrations with chaos thrown at every one of them, then a
// tally. Invariants 3 and 4 under repetition: links cut at random by a proxy between the
// agents, agents of either side killed with SIGKILL at random moments and started again.
// Every migration must end verified (0 mismatches, 0 lost migrations) or the exit is 1.
//
//   lazymig-soak [--migrations N] [--size 128MiB] [--seed S] [--max-kills K] [--json]
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/tool_main.h"
#include "cli/child_process.h"
#include "cli/demo.h"

namespace {

using lazymig::cli::DemoRun;
using lazymig::cli::Side;

struct SoakOptions {
  int migrations = 10;
  std::uint64_t size = 128ull << 20;
  std::uint64_t seed = 1;
  int max_kills = 2;
  bool json = false;
  std::string bindir;
};

struct Tally {
  int completed = 0;
  int lost = 0;  // ended anything but verified
  int kills = 0;
  int cuts = 0;
  std::uint64_t mismatches = 0;
  std::uint64_t reconnects = 0;
  nlohmann::json runs = nlohmann::json::array();
};

std::uint64_t installed(const DemoRun& run) {
  auto m = run.migration(Side::kDestination);
  if (!m) return 0;
  return m->value("progress", nlohmann::json::object()).value("pages_installed", std::uint64_t{0});
}

// Waits until the destination has installed `target` pages; false if the VM finished first
// (then there is nothing left to kill) or an agent is down for longer than a restart takes.
bool waitForProgress(DemoRun& run, std::uint64_t target) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    if (run.destinationVmExited()) return false;
    if (installed(run) >= target) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

struct Proxy {
  lazymig::cli::ChildProcess process;
  std::string address;
};

lazymig::Result<Proxy> startProxy(const DemoRun& run, const SoakOptions& o, std::mt19937_64& rng) {
  std::string port_file = run.dir() + "/proxy.port";
  int lo = 150 + static_cast<int>(rng() % 300);
  auto p = lazymig::cli::ChildProcess::spawn(
      {o.bindir + "/lazymig-chaos-proxy", "--listen", "127.0.0.1:0", "--target",
       run.agentAddress(Side::kSource), "--port-file", port_file, "--cut-ms",
       std::to_string(lo) + ":" + std::to_string(lo * 3), "--seed", std::to_string(rng())},
      "", true);
  if (!p) return std::unexpected(p.error());
  std::string port;
  for (int i = 0; i < 1000 && !(std::ifstream(port_file) >> port); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (port.empty())
    return lazymig::fail(lazymig::Errc::kTimeout, "chaos proxy", "no port after 10 s");
  return Proxy{std::move(*p), "127.0.0.1:" + port};
}

int cutsOf(Proxy& proxy) {
  proxy.process.signal(SIGTERM);
  proxy.process.wait(std::chrono::seconds(5));
  const std::string& out = proxy.process.output();
  auto at = out.rfind("{\"cuts\"");
  if (at == std::string::npos) return 0;
  auto j = nlohmann::json::parse(out.substr(at, out.find('\n', at) - at), nullptr, false);
  return j.is_discarded() ? 0 : j.value("cuts", 0);
}

// One migration with chaos: a cutting proxy on the agent link and up to max_kills SIGKILLs
// of a random side, each at a random point of the transfer.
nlohmann::json soakOne(const SoakOptions& o, int index, std::mt19937_64& rng, Tally& tally) {
  lazymig::cli::DemoOptions d;
  d.bindir = o.bindir;
  d.size = o.size;
  d.memory = rng() % 2 ? "memfd" : "anon";
  static const char* kPatterns[] = {"sequential", "random", "hot", "write"};
  d.pattern = kPatterns[rng() % 4];
  d.vcpus = 2;
  d.accesses = 3000;
  d.seed = rng();
  d.timeout_s = 240;
  d.verbose = false;
  d.extra_yaml = "migration:\n  bulk_rate_limit_mib_s: " + std::to_string(16 + rng() % 32) +
                 "\n  stall_timeout_ms: 600\n  checkpoint_interval_ms: 20\n"
                 "  reconnect:\n    initial_backoff_ms: 20\n    max_backoff_ms: 200\n    "
                 "give_up_after_s: 60\n";
  nlohmann::json rec{{"index", index},
                     {"memory", d.memory},
                     {"pattern", d.pattern},
                     {"kills", nlohmann::json::array()}};
  auto lose = [&](const std::string& why) {
    ++tally.lost;
    rec["outcome"] = "lost";
    rec["why"] = why;
    return rec;
  };
  auto run = DemoRun::prepare(d);
  if (!run) return lose(run.error().message());
  if (auto ok = run->prepareSourceMemory(); !ok) return lose(ok.error().message());
  auto proxy = startProxy(*run, o, rng);
  if (!proxy) return lose(proxy.error().message());
  if (auto ok = run->createMigrations(proxy->address); !ok) return lose(ok.error().message());
  if (auto ok = run->startDestinationVm(); !ok) return lose(ok.error().message());

  const std::uint64_t total = d.size / 4096;
  int kills = o.max_kills == 0 ? 0 : 1 + static_cast<int>(rng() % o.max_kills);
  double at = 0;
  for (int k = 0; k < kills; ++k) {
    at += (0.9 - at) * std::uniform_real_distribution<double>(0.1, 0.6)(rng);
    if (!waitForProgress(*run, static_cast<std::uint64_t>(at * static_cast<double>(total)))) break;
    Side side = rng() % 2 ? Side::kSource : Side::kDestination;
    run->killAgent(side, SIGKILL);
    if (auto ok = run->startAgent(side); !ok)
      return lose("restart failed: " + ok.error().message());
    ++tally.kills;
    rec["kills"].push_back(
        {{"side", side == Side::kSource ? "source" : "destination"}, {"at_fraction", at}});
  }
  auto vm = run->waitDestinationVm();
  int cuts = cutsOf(*proxy);
  tally.cuts += cuts;
  rec["cuts"] = cuts;
  if (!vm) {
    run->keepDirectory();
    return lose(vm.error().message() + " (kept " + run->dir() + ")");
  }
  auto r = run->report(*vm, 0);
  std::uint64_t mismatches = r.value("mismatches", std::uint64_t{0});
  tally.mismatches += mismatches;
  tally.reconnects += r.value("reconnects", std::uint64_t{0});
  rec["mismatches"] = mismatches;
  rec["reconnects"] = r.value("reconnects", 0);
  if (!r.value("verified", false) || mismatches != 0) {
    run->keepDirectory();
    return lose("not verified: " + r.dump() + " (kept " + run->dir() + ")");
  }
  ++tally.completed;
  rec["outcome"] = "completed";
  run->stopAll();
  return rec;
}

std::uint64_t parseSize(const std::string& v) {
  std::size_t used = 0;
  std::uint64_t n = std::stoull(v, &used);
  std::string unit = v.substr(used);
  if (unit == "KiB") return n << 10;
  if (unit == "MiB") return n << 20;
  if (unit == "GiB") return n << 30;
  if (unit.empty()) return n;
  throw std::invalid_argument("unknown size unit '" + unit + "' (use KiB, MiB or GiB)");
}

SoakOptions parseArgs(int argc, char** argv) {
  SoakOptions o;
  std::string self = argv[0];
  o.bindir =
      self.substr(0, self.find_last_of('/') == std::string::npos ? 0 : self.find_last_of('/'));
  if (o.bindir.empty()) o.bindir = ".";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--migrations")
      o.migrations = std::stoi(val());
    else if (a == "--size")
      o.size = parseSize(val());
    else if (a == "--seed")
      o.seed = std::stoull(val());
    else if (a == "--max-kills")
      o.max_kills = std::stoi(val());
    else if (a == "--bindir")
      o.bindir = val();
    else if (a == "--json")
      o.json = true;
    else
      throw std::invalid_argument("unknown argument '" + a + "'");
  }
  if (o.migrations <= 0 || o.max_kills < 0 || o.size < (4ull << 20)) {
    throw std::invalid_argument("--migrations must be > 0, --max-kills >= 0, --size >= 4MiB");
  }
  return o;
}

}  // namespace

static int run(int argc, char** argv) {
  SoakOptions o;
  try {
    o = parseArgs(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(
        stderr,
        "lazymig-soak: %s\nusage: lazymig-soak [--migrations N] [--size 128MiB] [--seed S] "
        "[--max-kills K] [--bindir DIR] [--json]\n",
        e.what());
    return 2;
  }
  std::mt19937_64 rng(o.seed);
  Tally tally;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < o.migrations; ++i) {
    auto rec = soakOne(o, i, rng, tally);
    std::fprintf(stderr, "soak: migration %d/%d %s: %s %s, %zu kills, %d cuts%s%s\n", i + 1,
                 o.migrations, rec.value("outcome", "?").c_str(), rec.value("memory", "").c_str(),
                 rec.value("pattern", "").c_str(), rec["kills"].size(), rec.value("cuts", 0),
                 rec.contains("why") ? ": " : "", rec.value("why", "").c_str());
    tally.runs.push_back(rec);
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json summary{{"migrations", o.migrations},
                         {"completed", tally.completed},
                         {"lost", tally.lost},
                         {"kills_survived", tally.kills},
                         {"links_cut", tally.cuts},
                         {"reconnects", tally.reconnects},
                         {"mismatches", tally.mismatches},
                         {"seconds", secs},
                         {"seed", o.seed}};
  if (o.json) {
    summary["runs"] = tally.runs;
    std::printf("%s\n", summary.dump().c_str());
  } else {
    std::printf("soak: %d migrations in %.0f s (seed %llu)\n", o.migrations, secs,
                static_cast<unsigned long long>(o.seed));
    std::printf(
        "  completed        %d\n  lost             %d\n  kills survived   %d\n  links cut        "
        "%d\n"
        "  reconnects       %llu\n  mismatches       %llu\n",
        tally.completed, tally.lost, tally.kills, tally.cuts,
        static_cast<unsigned long long>(tally.reconnects),
        static_cast<unsigned long long>(tally.mismatches));
  }
  return tally.lost == 0 && tally.mismatches == 0 ? 0 : 1;
}

int main(int argc, char** argv) {
  return lazymig::runToolMain("lazymig-soak", 1, [&] { return run(argc, argv); });
}

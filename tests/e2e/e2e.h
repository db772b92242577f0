// Shared by the end-to-end tests: real agents, real test VMs, real TLS on loopback.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "cli/demo.h"
#include "client/control_client.h"

namespace lazymig::e2e {

inline cli::DemoOptions baseOptions() {
  cli::DemoOptions o;
  o.bindir = LAZYMIG_BIN_DIR;
  o.size = 64ull << 20;
  o.vcpus = 2;
  o.accesses = 3000;
  o.guest_baseline = false;  // the guest's rate unmigrated: only the demo and its own test need it
  o.timeout_s = 180;
  o.verbose = false;
  // LAZYMIG_E2E_KEEP=1 keeps every run's directory (agent logs, configs) for debugging.
  o.keep = std::getenv("LAZYMIG_E2E_KEEP") != nullptr;
  return o;
}

// A whole file (an agent's or a test VM's log), or "" when it cannot be read.
inline std::string readFile(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Occurrences of `needle` in `text`.
inline int countOf(const std::string& text, const std::string& needle) {
  int n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// A migration run to its end step by step, kept so that its agents can still be asked about
// it: `vm` is the destination test VM's final JSON.
struct FinishedRun {
  cli::DemoRun run;
  nlohmann::json vm;
};

// Both agents started from `o`, the source's memory handed over, the migration created on both
// and the destination test VM started: from here the guest runs on memory arriving lazily.
inline Result<cli::DemoRun> migrationUnderWay(const cli::DemoOptions& o) {
  auto run = cli::DemoRun::prepare(o);
  if (!run) return std::unexpected(run.error());
  if (auto ok = run->prepareSourceMemory(); !ok) return std::unexpected(ok.error());
  if (auto ok = run->createMigrations(); !ok) return std::unexpected(ok.error());
  if (auto ok = run->startDestinationVm(); !ok) return std::unexpected(ok.error());
  return run;
}

inline Result<FinishedRun> runToTheEnd(const cli::DemoOptions& o) {
  auto run = migrationUnderWay(o);
  if (!run) return std::unexpected(run.error());
  auto vm = run->waitDestinationVm();
  if (!vm) return std::unexpected(vm.error());
  return FinishedRun{std::move(*run), std::move(*vm)};
}

// Polls `pred` until it holds or `timeout` passes; tests never sleep to synchronise.
inline bool waitUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

inline std::uint64_t progressOf(const cli::DemoRun& run, cli::Side side, const char* field) {
  auto m = run.migration(side);
  if (!m) return 0;
  return m->value("progress", nlohmann::json::object()).value(field, std::uint64_t{0});
}

// The agent's /metrics exposition (found through GET /v1/agent), or "" when unreachable.
inline std::string scrapeMetrics(const cli::DemoRun& run, cli::Side side) {
  auto agent = client::ControlClient(run.controlEndpoint(side)).get("/v1/agent");
  if (!agent) return "";
  auto address = nlohmann::json::parse(agent->body, nullptr, false).value("metrics_address", "");
  auto text = client::ControlClient("http://" + address).get("/metrics");
  return text ? text->body : "";
}

// The six phases of the faults served over the network (those the source timed): each fault's
// phases add up to its latency, so their means add up to the mean (within the rounding to
// nanoseconds), and no more faults are timed than were read.
inline void expectPhasesAddUp(const nlohmann::json& r) {
  const nlohmann::json phases = r.value("fault_phases_us", nlohmann::json::object());
  ASSERT_TRUE(phases.contains("count")) << r.dump();
  EXPECT_LE(phases["count"].get<std::uint64_t>(), r.value("demand_faults", std::uint64_t{0}));
  double means = 0;
  for (const char* name : {"destination_wait", "request_wire", "source_wait", "source_work",
                           "reply_wire", "install_wake"}) {
    ASSERT_TRUE(phases.contains(name)) << name << ": " << phases.dump();
    means += phases[name].value("mean", -1.0);
    EXPECT_GE(phases[name].value("mean", -1.0), 0.0) << name;
  }
  EXPECT_NEAR(means, phases["total"].value("mean", -1.0), 0.01) << phases.dump();
}

// The checks every migration must pass (invariant 1 and the page accounting).
// `one_lifetime`: both agents ran throughout, so the destination's counters saw every page.
inline void expectVerified(const nlohmann::json& r, std::uint64_t size, bool one_lifetime = true) {
  EXPECT_TRUE(r.value("verified", false)) << r.dump();
  EXPECT_EQ(r.value("mismatches", std::uint64_t{1}), 0u) << r.dump();
  EXPECT_EQ(r.value("pages", std::uint64_t{0}), size / 4096) << r.dump();
  EXPECT_EQ(r.value("destination_state", ""), "completed") << r.dump();
  EXPECT_EQ(r.value("source_state", ""), "completed") << r.dump();
  if (!one_lifetime) return;
  // The agent counts pages of the handshake's size (2 MiB for hugetlbfs guests).
  const std::uint64_t page_size = r.value("page_size", std::uint64_t{4096});
  std::uint64_t arrived =
      r.value("demand_pages", std::uint64_t{0}) + r.value("bulk_pages", std::uint64_t{0}) +
      r.value("zero_pages", std::uint64_t{0}) + r.value("removed_pages", std::uint64_t{0});
  EXPECT_EQ(arrived, size / page_size) << "every page arrives exactly once: " << r.dump();
  // Every fault a vCPU waited on is in the latency histogram, however it was answered.
  EXPECT_EQ(r["fault_latency_us"].value("count", std::uint64_t{0}),
            r.value("demand_faults", std::uint64_t{1}))
      << "fault latency samples vs faults: " << r.dump();
  expectPhasesAddUp(r);
}

// lazymig-chaos-proxy between the agents (the destination dials `address`), cutting or stalling
// the connections through it as `extra` says.
struct Proxy {
  cli::ChildProcess process;
  std::string address;
};

inline Proxy startProxy(const cli::DemoRun& run, const std::vector<std::string>& extra) {
  const std::string port_file = run.dir() + "/proxy.port";
  std::vector<std::string> argv = {std::string(LAZYMIG_BIN_DIR) + "/lazymig-chaos-proxy",
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--target",
                                   run.agentAddress(cli::Side::kSource),
                                   "--port-file",
                                   port_file};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto p = cli::ChildProcess::spawn(argv, "", true);
  EXPECT_TRUE(p) << p.error().message();
  std::string port;
  EXPECT_TRUE(waitUntil([&] { return static_cast<bool>(std::ifstream(port_file) >> port); },
                        std::chrono::seconds(10)));
  return Proxy{std::move(*p), "127.0.0.1:" + port};
}

}  // namespace lazymig::e2e

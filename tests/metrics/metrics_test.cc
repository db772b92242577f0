#include "metrics/metrics.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <thread>

namespace lazymig::metrics {
namespace {

using namespace std::chrono_literals;

void touchEverything(AgentMetrics& m) {
  m.observeFault(FaultPath::kNetwork, 150us);
  m.observeFault(FaultPath::kLocal, 2us);
  m.observeFault(FaultPath::kRaced, 90us);
  m.observeFaultPhase(FaultPhase::kSourceWait, 120us);
  m.addPages(PagePath::kDemand, 3);
  m.addPages(PagePath::kBulk, 64);
  m.addPages(PagePath::kZero, 10);
  m.addWireBytes(Channel::kUrgent, Direction::kSent, 100);
  m.addWireBytes(Channel::kBulk, Direction::kReceived, 4096);
  m.addPagesRemaining(100);
  m.addPagesRemaining(-77);
  m.migrationState("", "running");
  m.migrationState("running", "completed");
  m.observeMigrationDuration("completed", 2s);
  m.addReconnect(Channel::kBulk);
  m.addRefusal("token");
  m.observeStoreWrite(40us);
  m.setDegraded("store_full", 2);
  m.setStoreWritable(false);
  m.addUffdExists(2);
  m.addMigrationCpu("source", 0.75, 512ull << 20);
  m.addPrecopyPages(PrecopyPages::kStaged, 5);
  m.addPrecopyPages(PrecopyPages::kStaleDropped, 2);
  m.addPrecopyPages(PrecopyPages::kInstalledFromStaging, 3);
  m.addPrecopySwitch();
  m.observePrecopyRound(16384, 400ms, std::nullopt);
  m.observePrecopyRound(900, 30ms, 30000.0);
  m.addPrecopySourceSwitch("few_pages_left", 12);
}

TEST(Metrics, EveryFamilyIsExposedWithBoundedLabels) {
  auto m = AgentMetrics::create("node-a");
  touchEverything(*m);
  std::string text = m->scrapeText();
  for (const char* family : {"lazymig_fault_latency_seconds_bucket",
                             "lazymig_fault_phase_seconds_bucket",
                             "lazymig_pages_total",
                             "lazymig_wire_bytes_total",
                             "lazymig_pages_remaining",
                             "lazymig_migrations",
                             "lazymig_migration_duration_seconds_count",
                             "lazymig_reconnects_total",
                             "lazymig_refusals_total",
                             "lazymig_store_write_seconds_count",
                             "lazymig_uffd_eexist_total",
                             "lazymig_vcpu_blocked_seconds_total",
                             "lazymig_build_info",
                             "lazymig_migrations_degraded",
                             "lazymig_store_writable",
                             "lazymig_migration_cpu_seconds_total",
                             "lazymig_migration_moved_bytes_total",
                             "lazymig_migration_cpu_seconds_per_gib_bucket",
                             "lazymig_precopy_destination_pages_total",
                             "lazymig_precopy_destination_switches_total",
                             "lazymig_precopy_source_rounds_total",
                             "lazymig_precopy_source_round_pages_bucket",
                             "lazymig_precopy_source_round_duration_seconds_bucket",
                             "lazymig_precopy_source_dirty_pages_per_second_bucket",
                             "lazymig_precopy_source_stale_pages_bucket",
                             "lazymig_precopy_source_switches_total"}) {
    EXPECT_NE(text.find(family), std::string::npos) << family;
  }
  EXPECT_NE(text.find(R"(lazymig_pages_total{node="node-a",path="bulk"} 64)"), std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(lazymig_pages_remaining{node="node-a"} 23)"), std::string::npos);
  EXPECT_NE(
      text.find(
          R"(lazymig_precopy_destination_pages_total{node="node-a",event="stale_dropped"} 2)"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(lazymig_migrations{node="node-a",state="completed"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(lazymig_migrations{node="node-a",state="running"} 0)"), std::string::npos);
  EXPECT_NE(text.find(R"(lazymig_fault_latency_seconds_count{node="node-a",path="network"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(lazymig_fault_phase_seconds_count{node="node-a",phase="source_wait"} 1)"),
            std::string::npos);
  // A vCPU is blocked for every fault, whichever way it was served: 150 + 2 + 90 us.
  EXPECT_NE(text.find(R"(lazymig_vcpu_blocked_seconds_total{node="node-a"} 0.000242)"),
            std::string::npos)
      << text;
  // Per round: no round number, no migration; round 1 has no dirty rate.
  for (const char* series :
       {R"(lazymig_precopy_source_rounds_total{node="node-a"} 2)",
        R"(lazymig_precopy_source_round_pages_sum{node="node-a"} 17284)",
        R"(lazymig_precopy_source_round_pages_bucket{node="node-a",le="1024"} 1)",
        R"(lazymig_precopy_source_round_duration_seconds_count{node="node-a"} 2)",
        R"(lazymig_precopy_source_dirty_pages_per_second_count{node="node-a"} 1)",
        R"(lazymig_precopy_source_stale_pages_sum{node="node-a"} 12)",
        R"(lazymig_precopy_source_switches_total{node="node-a",reason="few_pages_left"} 1)",
        R"(lazymig_precopy_source_switches_total{node="node-a",reason="deadline"} 0)"}) {
    EXPECT_NE(text.find(series), std::string::npos) << series << "\n" << text;
  }
  EXPECT_EQ(text.find("round=\""), std::string::npos) << "no per-round label";
  EXPECT_EQ(text.find("migration=\""), std::string::npos)
      << "no per-migration label on fleet series";
}

// Prometheus sees no increase() in a series whose first sample is already 1: the alerts on
// refusals and failed migrations would miss the first one on each agent.
TEST(Metrics, AlertedSeriesExistAtZeroBeforeTheFirstEvent) {
  auto m = AgentMetrics::create("n");
  std::string text = m->scrapeText();
  for (auto reason : kRefusalReasons) {
    EXPECT_NE(
        text.find("lazymig_refusals_total{node=\"n\",reason=\"" + std::string(reason) + "\"} 0"),
        std::string::npos)
        << reason;
  }
  for (auto outcome : kMigrationOutcomes) {
    EXPECT_NE(text.find("lazymig_migration_duration_seconds_count{node=\"n\",outcome=\"" +
                        std::string(outcome) + "\"} 0"),
              std::string::npos)
        << outcome;
  }
  EXPECT_NE(text.find(R"(lazymig_migrations{node="n",state="failed"} 0)"), std::string::npos);
  for (auto reason : kDegradedReasons) {
    EXPECT_NE(text.find("lazymig_migrations_degraded{node=\"n\",reason=\"" + std::string(reason) +
                        "\"} 0"),
              std::string::npos)
        << reason;
  }
  EXPECT_NE(text.find(R"(lazymig_store_writable{node="n"} 1)"), std::string::npos);
  for (auto reason : kPrecopySwitchReasons) {
    EXPECT_NE(text.find("lazymig_precopy_source_switches_total{node=\"n\",reason=\"" +
                        std::string(reason) + "\"} 0"),
              std::string::npos)
        << reason;
  }
  for (auto role : kRoles) {
    EXPECT_NE(text.find("lazymig_migration_cpu_seconds_total{node=\"n\",role=\"" +
                        std::string(role) + "\"} 0"),
              std::string::npos)
        << role;
  }
}

// The fleet's CPU per GiB is the ratio of the two counters; each migration's own figure is
// one observation of the histogram. A migration that moved nothing adds its CPU but no figure.
TEST(Metrics, MigrationCpuCountersAndFigurePerGibAgree) {
  auto m = AgentMetrics::create("n");
  m->addMigrationCpu("destination", 1.0, 1ull << 30);
  m->addMigrationCpu("destination", 1.5, 512ull << 20);
  m->addMigrationCpu("destination", 0.25, 0);
  const std::string text = m->scrapeText();
  for (const char* series :
       {R"(lazymig_migration_cpu_seconds_total{node="n",role="destination"} 2.75)",
        R"(lazymig_migration_moved_bytes_total{node="n",role="destination"} 1610612736)",
        R"(lazymig_migration_cpu_seconds_per_gib_count{node="n",role="destination"} 2)",
        R"(lazymig_migration_cpu_seconds_per_gib_sum{node="n",role="destination"} 4)",
        R"(lazymig_migration_cpu_seconds_total{node="n",role="source"} 0)"}) {
    EXPECT_NE(text.find(series), std::string::npos) << series << "\n" << text;
  }
}

TEST(Metrics, ConcurrentObservationsAddUp) {
  auto m = AgentMetrics::create("n");
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) m->observeFault(FaultPath::kNetwork, 100us);
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_NE(
      m->scrapeText().find(R"(lazymig_fault_latency_seconds_count{node="n",path="network"} 40000)"),
      std::string::npos);
}

TEST(Metrics, ExposerServesTheTextOverHttp) {
  auto m = AgentMetrics::create("n");
  touchEverything(*m);
  auto port = m->startExposer("127.0.0.1:0");
  ASSERT_TRUE(port) << port.error().message();
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(*port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  std::string req = "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) resp.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  EXPECT_NE(resp.find("200 OK"), std::string::npos);
  EXPECT_NE(resp.find("lazymig_pages_total"), std::string::npos);
}

TEST(Metrics, PromtoolAcceptsTheExposition) {
  if (::access("/usr/bin/promtool", X_OK) != 0)
    GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  auto m = AgentMetrics::create("n");
  touchEverything(*m);
  std::string path = "/tmp/lazymig-metrics-" + std::to_string(::getpid()) + ".txt";
  std::ofstream(path) << m->scrapeText();
  std::string cmd = "promtool check metrics < " + path + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  int rc = ::pclose(p);
  std::remove(path.c_str());
  EXPECT_EQ(rc, 0) << out;
}

}  // namespace
}  // namespace lazymig::metrics

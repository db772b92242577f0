// DestinationMigration as a whole, with real parts: the VMM's handshake over a real UNIX socket
// carrying a real uffd, a real RocksDB, and a source stand-in over real TLS on loopback. A
// guest thread touching every page is served by demand faults until the migration completes
// (with the source's acknowledgement); a VMM whose memory is not the source's is refused at
// the handshake and the right VMM is still taken; a second VMM is refused; a source that
// refuses the migration for good fails it, naming the refusal; with pre-copy, the bulk link
// stages the source's rounds before any VMM and only stale pages are fetched on demand.
#include "agent/destination/destination_migration.h"

#include <linux/userfaultfd.h>

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include "store/database.h"
#include "sys/mapping.h"
#include "sys/thread_priority.h"
#include "sys/unix_socket.h"
#include "test_support.h"

namespace lazymig::agent {
namespace {

using namespace std::chrono_literals;
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kPages = 64;

using test_support::waitUntil;

std::vector<std::byte> sourceMemory() { return test_support::sourceMemory(kPages, kPage); }

// The VMM's side: guest memory registered with a uffd, handed over in Firecracker's classic
// handshake (one fd: the uffd; the regions as JSON).
struct Vmm {
  sys::Mapping guest;
  sys::Uffd uffd;
  sys::UnixSocket socket;

  explicit Vmm(std::uint64_t pages)
      : guest(*sys::Mapping::anonymous(Bytes{pages * kPage})),
        uffd(*sys::Uffd::open(UFFD_FEATURE_EVENT_REMOVE)) {
    EXPECT_TRUE(uffd.registerRange(guest.address(), guest.size(), sys::RegisterMode::kMissing));
  }
  Status handOver(const std::string& path) {
    auto s = sys::UnixSocket::connect(path);
    if (!s) return std::unexpected(s.error());
    socket = std::move(*s);
    std::vector<vmm::GuestRegionMapping> regions = {{.base_host_virt_addr = guest.address().value,
                                                     .size = guest.size().value,
                                                     .offset = 0,
                                                     .page_size = kPage}};
    int fds[] = {uffd.pollFd()};
    return vmm::sendHandshake(socket, regions, fds);
  }
  // A refused handover is closed by the agent; an accepted one stays open.
  bool closedByTheAgent() {
    char byte;
    return ::recv(socket.get(), &byte, 1, 0) == 0;
  }
};

class Destination : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazymig-destination-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    db_ = std::move(*store::Database::open(dir_ + "/db"));
    config_.migration.reconnect.initial_backoff = 20ms;
    config_.migration.reconnect.max_backoff = 100ms;
    config_.migration.reconnect.give_up_after = std::chrono::seconds(5);
    // Not the default (0), so that a status showing it proves the setting was applied.
    config_.migration.fault_thread_nice = -5;
    ctx_.emplace(AgentContext{config_, pki_.clientContext(), *db_, nullptr});
  }
  void TearDown() override {
    if (migration_) migration_->shutdown();
    migration_.reset();
    source_.reset();
    db_.reset();
    std::filesystem::remove_all(dir_);
  }
  void startSource(test_support::SourceStandIn::Options options) {
    options.migration_id = "m1";
    source_ = std::make_unique<test_support::SourceStandIn>(pki_, std::move(options));
  }
  void startMigration(PrecopyPolicy precopy = {}) {
    DestinationSpec spec{.id = "m1",
                         .token = "0123456789abcdef0123456789abcdef",
                         .peer_identity = test_support::TestPki::kSourceIdentity,
                         .source_address = source_->address(),
                         .handshake_socket = dir_ + "/m1.sock",
                         .vmm_pid = std::nullopt,
                         .precopy = precopy};
    migration_ = std::make_unique<DestinationMigration>(spec, *ctx_);
    ASSERT_TRUE(migration_->start());
    ASSERT_EQ(migration_->state(), MigrationState::kWaitingForVmm);
  }
  std::string socketPath() const { return dir_ + "/m1.sock"; }
  // Hands a VMM over, touches every page from a guest thread (each one a demand fault without
  // a bulk stream) and returns the completed migration's status.
  nlohmann::json touchEveryPage() {
    startMigration();
    Vmm vmm(kPages);
    EXPECT_TRUE(vmm.handOver(socketPath()));
    EXPECT_TRUE(reaches(MigrationState::kRunning)) << migration_->reason();
    std::uint64_t mismatches = 0;
    const auto src = sourceMemory();
    std::thread vcpu([&] {
      for (std::uint64_t p = 0; p < kPages; ++p) {
        mismatches += std::memcmp(vmm.guest.data() + p * kPage, src.data() + p * kPage, kPage) != 0;
      }
    });
    vcpu.join();
    EXPECT_EQ(mismatches, 0u);
    EXPECT_TRUE(reaches(MigrationState::kCompleted)) << migration_->reason();
    return migration_->toJson();
  }
  bool reaches(MigrationState state) {
    return waitUntil([&] { return migration_->state() == state; }, 30s);
  }

  std::string dir_;
  config::Config config_;
  test_support::TestPki pki_;
  std::unique_ptr<store::Database> db_;
  std::optional<AgentContext> ctx_;
  std::unique_ptr<test_support::SourceStandIn> source_;
  std::unique_ptr<DestinationMigration> migration_;
};

TEST_F(Destination, FaultsAreServedFromTheSourceUntilTheMigrationCompletes) {
  const auto src = sourceMemory();
  // No bulk stream: every page must come through a demand fault.
  startSource({.memory = src, .stream_bulk = false});
  startMigration();
  Vmm vmm(kPages);
  ASSERT_TRUE(vmm.handOver(socketPath()));
  ASSERT_TRUE(reaches(MigrationState::kRunning)) << migration_->reason();

  // The guest touches every page; each read blocks in the kernel until the agent installs it.
  std::uint64_t mismatches = 0;
  std::thread vcpu([&] {
    for (std::uint64_t p = 0; p < kPages; ++p) {
      if (std::memcmp(vmm.guest.data() + p * kPage, src.data() + p * kPage, kPage) != 0) {
        ++mismatches;
      }
    }
  });
  vcpu.join();
  EXPECT_EQ(mismatches, 0u);
  ASSERT_TRUE(reaches(MigrationState::kCompleted)) << migration_->reason();
  EXPECT_EQ(source_->pagesRequested(), kPages);
  EXPECT_GE(source_->completes(), 1u);
  auto status = migration_->toJson();
  EXPECT_EQ(status["state"], "completed") << status.dump();
  EXPECT_EQ(status["source_acknowledged"], true) << status.dump();
  // Its fault thread ran at migration.fault_thread_nice, or the status says why not.
  if (sys::mayUseNice(config_.migration.fault_thread_nice)) {
    EXPECT_EQ(status["fault_thread"]["nice"], config_.migration.fault_thread_nice) << status.dump();
  } else {
    EXPECT_TRUE(status["fault_thread"].contains("error")) << status.dump();
  }
}

// Every demand fault served over the network is timed by phase (ServeTimes from the source),
// and the phases of each add up to its latency: their means add up to the mean.
TEST_F(Destination, EveryNetworkFaultIsTimedByPhaseAndThePhasesAddUp) {
  startSource({.memory = sourceMemory(), .stream_bulk = false});
  auto status = touchEveryPage();
  const auto& phases = status["fault_phases_us"];
  EXPECT_EQ(phases["count"], kPages) << phases.dump();
  EXPECT_EQ(status["fault_latency_us"]["count"], kPages) << status.dump();
  double means = 0;
  for (auto name : metrics::kFaultPhaseNames) {
    const auto& p = phases[std::string(name)];
    EXPECT_GE(p["p99"].get<double>(), p["p50"].get<double>()) << name;
    means += p["mean"].get<double>();
  }
  EXPECT_NEAR(means, phases["total"]["mean"].get<double>(), 0.01) << phases.dump();
  EXPECT_GT(phases["total"]["mean"].get<double>(), 0.0);
}

// A source slow to serve shows in the source's phases, not in the destination's: the delay is
// measured there (a lower bound, not a speed), and the install is not charged with it.
TEST_F(Destination, ASlowSourceShowsInTheSourcePhasesNotInTheInstall) {
  constexpr auto kDelay = 10ms;
  startSource({.memory = sourceMemory(), .stream_bulk = false, .serve_delay = kDelay});
  auto status = touchEveryPage();
  const auto& phases = status["fault_phases_us"];
  ASSERT_EQ(phases["count"], kPages) << phases.dump();
  const double work = phases["source_work"]["mean"].get<double>();
  const double delay_us = std::chrono::duration<double, std::micro>(kDelay).count();
  EXPECT_GE(work, delay_us) << phases.dump();
  EXPECT_LT(phases["install_wake"]["mean"].get<double>(), work) << phases.dump();
  EXPECT_LT(phases["destination_wait"]["mean"].get<double>(), work) << phases.dump();
}

// A protocol 1.1 source answers the ask for ServeTimes as a Ping and sends none: the migration
// runs as before, its faults counted and untimed.
TEST_F(Destination, ASourceWithoutServeTimesServesEveryFaultUntimed) {
  startSource({.memory = sourceMemory(), .stream_bulk = false, .serve_times = false});
  auto status = touchEveryPage();
  EXPECT_EQ(status["fault_phases_us"]["count"], 0u) << status.dump();
  EXPECT_EQ(status["fault_latency_us"]["count"], kPages) << status.dump();
}

// ServeTimes are timing only: a malformed one costs its fault the phases, never the migration.
TEST_F(Destination, MalformedServeTimesCostThePhasesNotTheMigration) {
  startSource({.memory = sourceMemory(), .stream_bulk = false, .malformed_serve_times = true});
  auto status = touchEveryPage();
  EXPECT_EQ(status["state"], "completed") << status.dump();
  EXPECT_EQ(status["fault_phases_us"]["count"], 0u) << status.dump();
  EXPECT_EQ(status["fault_latency_us"]["count"], kPages) << status.dump();
}

TEST_F(Destination, AVmmWhoseMemoryIsNotTheSourcesIsRefusedAndTheRightOneTaken) {
  startSource({.memory = sourceMemory()});
  startMigration();
  Vmm wrong(kPages / 2);
  ASSERT_TRUE(wrong.handOver(socketPath()));
  EXPECT_TRUE(wrong.closedByTheAgent());
  EXPECT_EQ(migration_->state(), MigrationState::kWaitingForVmm);

  Vmm right(kPages);
  ASSERT_TRUE(right.handOver(socketPath()));
  ASSERT_TRUE(reaches(MigrationState::kRunning)) << migration_->reason();
  // And one VMM is all a migration takes.
  Vmm second(kPages);
  ASSERT_TRUE(second.handOver(socketPath()));
  EXPECT_TRUE(second.closedByTheAgent());
  // The bulk stream finishes it without a single fault.
  ASSERT_TRUE(reaches(MigrationState::kCompleted)) << migration_->reason();
}

TEST_F(Destination, ASourceThatRefusesTheMigrationFailsItNamingTheRefusal) {
  startSource({.memory = sourceMemory(),
               .refuse_hello = transport::ErrorFrame{3, "the token does not match"}});
  startMigration();
  Vmm vmm(kPages);
  ASSERT_TRUE(vmm.handOver(socketPath()));
  ASSERT_TRUE(reaches(MigrationState::kFailed));
  EXPECT_NE(migration_->reason().find("source refused the migration"), std::string::npos)
      << migration_->reason();
  EXPECT_NE(migration_->reason().find("the token does not match"), std::string::npos)
      << migration_->reason();
}

// Issue 19: with `precopy` on, the destination connects its bulk link at creation, stages the
// rounds before any VMM exists, and once the VMM is there installs every staged page the
// source did not name stale; the guest then faults over the network on the stale ones only.
TEST_F(Destination, PrecopyStagesBeforeTheVmmAndFetchesOnlyStalePagesOnDemand) {
  const auto round = sourceMemory();
  const std::vector<std::uint64_t> stale = {3, 17, 42};
  auto paused = round;
  for (auto p : stale) std::memset(paused.data() + p * kPage, 0xee, kPage);
  startSource({.memory = paused, .stream_bulk = false});
  startMigration(*parsePrecopyPolicy("auto", 60s));
  ASSERT_TRUE(waitUntil([&] { return source_->resumes() >= 1; }, 10s))
      << "the bulk link connects before any VMM";
  EXPECT_EQ(migration_->state(), MigrationState::kWaitingForVmm);
  std::vector<std::uint64_t> every;
  for (std::uint64_t p = 0; p < kPages; ++p) every.push_back(p);
  ASSERT_TRUE(source_->sendPages(every, std::make_shared<const std::vector<std::byte>>(round)));
  ASSERT_TRUE(source_->sendStalePages(stale, /*last=*/true));
  ASSERT_TRUE(waitUntil([&] { return migration_->toJson()["precopy"]["switched"] == true; }, 10s));
  auto precopy = migration_->toJson()["precopy"];
  EXPECT_EQ(precopy["staged_pages"], kPages - stale.size()) << precopy.dump();
  EXPECT_EQ(precopy["stale_dropped"], stale.size()) << precopy.dump();
  EXPECT_EQ(precopy["mode"], "auto");

  // The staging knows the source's layout: a VMM of another guest is refused at once.
  Vmm wrong(kPages / 2);
  ASSERT_TRUE(wrong.handOver(socketPath()));
  EXPECT_TRUE(wrong.closedByTheAgent());
  Vmm vmm(kPages);
  ASSERT_TRUE(vmm.handOver(socketPath()));
  ASSERT_TRUE(reaches(MigrationState::kRunning)) << migration_->reason();
  std::uint64_t mismatches = 0;
  std::thread vcpu([&] {
    for (std::uint64_t p = 0; p < kPages; ++p) {
      if (std::memcmp(vmm.guest.data() + p * kPage, paused.data() + p * kPage, kPage) != 0) {
        ++mismatches;
      }
    }
  });
  vcpu.join();
  EXPECT_EQ(mismatches, 0u);
  ASSERT_TRUE(reaches(MigrationState::kCompleted)) << migration_->reason();
  EXPECT_EQ(source_->pagesRequested(), stale.size()) << "only the stale pages went on demand";
  precopy = migration_->toJson()["precopy"];
  EXPECT_EQ(precopy["installed_from_staging"], kPages - stale.size()) << precopy.dump();
}

}  // namespace
}  // namespace lazymig::agent

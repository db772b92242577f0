// A source agent's peer side on real loopback TLS, for the source box's tests: a CA with a
// source, a destination and a stranger certificate, a peer loop, a real RocksDB and
// Prometheus registry, a PeerListener, and a TestDestination that dials it as the
// destination agent would and records every frame it is sent.
#pragma once

#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "agent/core/loop_sync.h"
#include "agent/source/peer_listener.h"
#include "agent/source/source_migration.h"
#include "metrics/metrics.h"
#include "store/database.h"
#include "transport/pki.h"

namespace lazymig::agent::source_test {

using namespace std::chrono_literals;

inline constexpr char kToken[] = "0123456789abcdef0123456789abcdef";
inline constexpr char kSourceId[] = "spiffe://t/source";
inline constexpr char kDestinationId[] = "spiffe://t/destination";
inline constexpr char kStrangerId[] = "spiffe://t/stranger";

// Waits for `pred` under `mu`, signalled by `cv`, at most 10 s.
template <class Pred>
bool waitOn(std::mutex& mu, std::condition_variable& cv, Pred pred) {
  std::unique_lock lock(mu);
  return cv.wait_for(lock, 10s, pred);
}

// One channel dialled as a destination agent: sends frames, records the frames it receives.
class TestDestination {
 public:
  struct Frame {
    transport::FrameType type;
    std::vector<std::byte> payload;
  };

  TestDestination(transport::EventLoop& loop, std::shared_ptr<transport::TlsContext> tls,
                  std::uint16_t port)
      : loop_(loop) {
    std::promise<Result<std::unique_ptr<transport::Connection>>> dialled;
    transport::connect(
        loop, std::move(tls), {"127.0.0.1:" + std::to_string(port), {}, 5s, kSourceId},
        [&](Result<std::unique_ptr<transport::Connection>> c) {
          if (c) {
            (*c)->setHandlers({[this](const transport::FrameHeader& h,
                                      std::span<const std::byte> p) { received(h, p); },
                               [this](const Error&) {
                                 std::lock_guard lock(mu_);
                                 closed_ = true;
                                 cv_.notify_all();
                               },
                               nullptr});
          }
          dialled.set_value(std::move(c));
        });
    auto c = dialled.get_future().get();
    if (c) conn_ = std::move(*c);
  }
  ~TestDestination() {
    runOnLoop(loop_, [this] {
      if (conn_) conn_->close();
      conn_.reset();
    });
  }
  // False when TLS refused us (the tests that expect it check).
  bool connected() const { return conn_ != nullptr; }

  void send(std::string frame) {
    runOnLoop(loop_, [&] { conn_->sendEncoded(frame); });
  }
  transport::Hello hello(transport::ChannelKind channel, std::uint64_t memory_bytes,
                         std::string token = kToken, std::string id = "m1") {
    return {std::move(id), std::move(token), channel, 4096, memory_bytes};
  }
  // Waits until a frame of `type` arrived (or the connection closed); its payload.
  std::optional<Frame> waitFor(transport::FrameType type) {
    std::optional<Frame> out;
    waitOn(mu_, cv_, [&] {
      for (auto& f : frames_) {
        if (f.type == type) out = f;
      }
      return out || closed_;
    });
    return out;
  }
  // The code of the Error frame it was sent (0: none came before the connection closed).
  std::uint16_t errorCode() {
    auto f = waitFor(transport::FrameType::kError);
    if (!f) return 0;
    auto e = transport::decodeError(f->payload);
    return e ? e->code : 0;
  }
  bool waitClosed() {
    return waitOn(mu_, cv_, [&] { return closed_; });
  }
  template <class Pred>
  bool waitUntil(Pred pred) {
    return waitOn(mu_, cv_, [&] { return pred(frames_); });
  }

 private:
  void received(const transport::FrameHeader& h, std::span<const std::byte> p) {
    std::lock_guard lock(mu_);
    frames_.push_back({h.type, {p.begin(), p.end()}});
    cv_.notify_all();
  }

  transport::EventLoop& loop_;
  std::unique_ptr<transport::Connection> conn_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Frame> frames_;
  bool closed_ = false;
};

class SourcePeer : public ::testing::Test {
 protected:
  static constexpr std::uint64_t kPages = 256;
  static constexpr std::uint64_t kBytes = kPages * 4096;

  void SetUp() override {
    char tmpl[] = "/tmp/lazymig-source-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    ca_ = *transport::generateCa(dir_, "ca");
    source_tls_ = leaf("source", kSourceId, transport::TlsContext::Side::kServer);
    destination_tls_ = leaf("destination", kDestinationId, transport::TlsContext::Side::kClient);
    stranger_tls_ = leaf("stranger", kStrangerId, transport::TlsContext::Side::kClient);
    auto db = store::Database::open(dir_ + "/db");
    ASSERT_TRUE(db) << db.error().message();
    db_ = std::move(*db);
    ctx_.emplace(AgentContext{config_, nullptr, *db_, metrics_.get()});
    peer_loop_ = std::move(*transport::EventLoop::start("test-peer"));
    client_loop_ = std::move(*transport::EventLoop::start("test-destination"));
    writeSnapshot();
  }
  void TearDown() override {
    if (migration_) migration_->shutdown();
    runOnLoop(*peer_loop_, [this] {
      if (listener_) listener_->stop();
      listener_.reset();
    });
    client_loop_->stop();
    peer_loop_->stop();
    migration_.reset();
    db_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::shared_ptr<transport::TlsContext> leaf(const std::string& name, const std::string& uri,
                                              transport::TlsContext::Side side) {
    transport::LeafSpec spec;
    spec.uris = {uri};
    auto l = transport::issueLeaf(ca_, dir_, name, spec);
    EXPECT_TRUE(l) << l.error().message();
    auto tls = transport::TlsContext::create(
        side, transport::TlsFiles{ca_.cert_file, l->cert_file, l->key_file});
    EXPECT_TRUE(tls) << tls.error().message();
    return *tls;
  }

  // Every fourth page is zero; the others carry their index.
  void writeSnapshot() {
    std::vector<std::uint64_t> page(4096 / 8);
    std::ofstream out(dir_ + "/guest.mem", std::ios::binary);
    for (std::uint64_t p = 0; p < kPages; ++p) {
      std::fill(page.begin(), page.end(), p % 4 == 0 ? 0 : p);
      out.write(reinterpret_cast<const char*>(page.data()), 4096);
    }
  }

  // The migration, started on its snapshot file (`with_memory`) or waiting for a handover.
  void createMigration(bool with_memory = true, PrecopyPolicy precopy = {}) {
    SourceSpec spec{"m1", kToken, kDestinationId, "", "", 4096};
    spec.precopy = precopy;
    if (with_memory) {
      spec.snapshot_file = dir_ + "/guest.mem";
    } else {
      spec.handover_socket = dir_ + "/handover.sock";
    }
    migration_ = std::make_shared<SourceMigration>(spec, *ctx_, *peer_loop_);
    auto ok = migration_->start();
    ASSERT_TRUE(ok) << ok.error().message();
  }

  void listen(std::chrono::milliseconds hello_timeout = 10s) {
    runOnLoop(*peer_loop_, [&] {
      auto l = PeerListener::start(
          *peer_loop_, source_tls_, {"127.0.0.1:0", hello_timeout},
          [this](const std::string& id) {
            return id == "m1" ? migration_ : std::shared_ptr<SourceMigration>();
          },
          nullptr, metrics_.get());
      ASSERT_TRUE(l) << l.error().message();
      listener_ = std::move(*l);
    });
  }

  std::unique_ptr<TestDestination> dial(std::shared_ptr<transport::TlsContext> tls = nullptr) {
    return std::make_unique<TestDestination>(*client_loop_, tls ? tls : destination_tls_,
                                             listener_->port());
  }

  // For what no callback signals (a metric a loop thread updates): polls, at most 10 s.
  template <class Pred>
  static bool eventually(Pred pred) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!pred()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(1ms);
    }
    return true;
  }
  double refusals(const std::string& reason) {
    return metricValue("lazymig_refusals_total", "reason=\"" + reason + "\"");
  }
  // The value of the first series of `family` whose labels contain `labels`.
  double metricValue(const std::string& family, const std::string& labels) {
    std::istringstream text(metrics_->scrapeText());
    for (std::string line; std::getline(text, line);) {
      if (line.rfind(family + "{", 0) == 0 && line.find(labels) != std::string::npos) {
        return std::stod(line.substr(line.rfind(' ') + 1));
      }
    }
    return -1;
  }

  std::string dir_;
  transport::PemFiles ca_;
  std::shared_ptr<transport::TlsContext> source_tls_, destination_tls_, stranger_tls_;
  config::Config config_;
  std::unique_ptr<store::Database> db_;
  std::unique_ptr<metrics::AgentMetrics> metrics_ = metrics::AgentMetrics::create("n");
  std::optional<AgentContext> ctx_;  // once the database is open
  std::unique_ptr<transport::EventLoop> peer_loop_, client_loop_;
  std::shared_ptr<SourceMigration> migration_;
  std::unique_ptr<PeerListener> listener_;
};

}  // namespace lazymig::agent::source_test

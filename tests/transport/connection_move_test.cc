// moveToLoop on real loopback TLS: an accepted connection moved to another loop carries on
// there (both directions, the peer none the wiser, a frame cut in two by the move arriving
// whole), and a move that cannot be made closes the connection instead of leaving it stuck.
#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <future>
#include <mutex>

#include "transport/connection.h"
#include "transport/pki.h"

namespace lazymig::transport {
namespace {

using namespace std::chrono_literals;

class ConnectionMove : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazymig-move-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    ca_ = *generateCa(dir_, "ca");
    accept_loop_ = std::move(*EventLoop::start("move-accept"));
    target_loop_ = std::move(*EventLoop::start("move-target"));
    client_loop_ = std::move(*EventLoop::start("move-client"));
    auto server_tls = TlsContext::create(TlsContext::Side::kServer, leaf("server", kServerId));
    ASSERT_TRUE(server_tls) << server_tls.error().message();
    run(*accept_loop_, [&] {
      Server::Options o;
      o.on_connection = [this](std::unique_ptr<Connection> c) { accepted(std::move(c)); };
      server_ = std::move(*Server::listen(*accept_loop_, *server_tls, o));
    });
    auto client_tls = TlsContext::create(TlsContext::Side::kClient, leaf("client", kClientId));
    ASSERT_TRUE(client_tls) << client_tls.error().message();
    std::promise<Result<std::unique_ptr<Connection>>> dialled;
    connect(*client_loop_, *client_tls,
            {"127.0.0.1:" + std::to_string(server_->port()), {}, 5s, kServerId},
            [&](Result<std::unique_ptr<Connection>> c) {
              if (c) {
                (*c)->setHandlers({[this](const FrameHeader& h, std::span<const std::byte>) {
                                     note([&] { client_frames_.push_back(h.type); });
                                   },
                                   [this](const Error&) { note([&] { client_closed_ = true; }); },
                                   nullptr});
              }
              dialled.set_value(std::move(c));
            });
    auto c = dialled.get_future().get();
    ASSERT_TRUE(c) << c.error().message();
    client_ = std::move(*c);
  }
  void TearDown() override {
    run(*client_loop_, [&] { client_.reset(); });
    run(*target_loop_, [&] { moved_.reset(); });
    run(*accept_loop_, [&] {
      accepted_.reset();
      server_.reset();
    });
    client_loop_->stop();
    target_loop_->stop();
    accept_loop_->stop();
    std::filesystem::remove_all(dir_);
  }

  static constexpr char kServerId[] = "spiffe://t/server";
  static constexpr char kClientId[] = "spiffe://t/client";

  TlsFiles leaf(const std::string& name, const std::string& uri) {
    LeafSpec s;
    s.uris = {uri};
    auto l = issueLeaf(ca_, dir_, name, s);
    EXPECT_TRUE(l) << l.error().message();
    return TlsFiles{ca_.cert_file, l->cert_file, l->key_file};
  }
  // Runs fn on `loop` and waits; here if the loop has stopped.
  static void run(EventLoop& loop, const std::function<void()>& fn) {
    std::promise<void> done;
    if (!loop.post([&] {
          fn();
          done.set_value();
        })) {
      return fn();
    }
    done.get_future().wait();
  }
  template <class Fn>
  void note(Fn fn) {
    std::lock_guard lock(mu_);
    fn();
    cv_.notify_all();
  }
  bool waitFor(const std::function<bool()>& pred) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 10s, pred);
  }

  // The accept loop's end: records the first frame, then waits for the test to move it.
  void accepted(std::unique_ptr<Connection> c) {
    c->setHandlers({[this](const FrameHeader& h, std::span<const std::byte>) {
                      note([&] { accept_loop_frames_.push_back(h.type); });
                    },
                    nullptr, nullptr});
    note([&] { accepted_ = std::move(c); });
  }
  // Moves the accepted connection to the target loop; there it answers each Ping with a Pong
  // and records each frame with whether it ran on the target loop's thread.
  Status moveAccepted() {
    Status out;
    run(*accept_loop_, [&] {
      out = moveToLoop(std::move(accepted_), *target_loop_,
                       [this](Result<std::unique_ptr<Connection>> c) { onMoved(std::move(c)); });
    });
    return out;
  }
  void onMoved(Result<std::unique_ptr<Connection>> c) {
    ASSERT_TRUE(c) << c.error().message();
    Connection* raw = c->get();
    raw->setHandlers({[this, raw](const FrameHeader& h, std::span<const std::byte> p) {
                        const bool on_target = target_loop_->inLoopThread();
                        if (h.type == FrameType::kPing) {
                          raw->sendEncoded(encodePing(FrameType::kPong, *decodePing(p)));
                        }
                        note([&] { target_frames_.push_back({h.type, p.size(), on_target}); });
                      },
                      [this](const Error&) { note([&] { moved_closed_ = true; }); }, nullptr});
    note([&] { moved_ = std::move(*c); });
  }
  void clientSend(std::string bytes) {
    run(*client_loop_, [&] { client_->sendEncoded(bytes); });
  }

  struct Seen {
    FrameType type;
    std::size_t payload_bytes;
    bool on_target_loop;
  };
  std::string dir_;
  PemFiles ca_;
  std::unique_ptr<EventLoop> accept_loop_, target_loop_, client_loop_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<Connection> client_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unique_ptr<Connection> accepted_;  // accept loop
  std::unique_ptr<Connection> moved_;     // target loop
  bool client_closed_ = false;
  bool moved_closed_ = false;
  std::vector<FrameType> accept_loop_frames_, client_frames_;
  std::vector<Seen> target_frames_;
};

// The first frame arrives on the accept loop together with the first half of the next one (one
// TLS record); the move carries that half along, and the rest completes it on the target loop,
// where every later frame is served and answered.
TEST_F(ConnectionMove, CarriesOnOnTheTargetLoopWithAFrameCutInTwoByTheMove) {
  ASSERT_TRUE(waitFor([&] { return accepted_ != nullptr; }));
  const std::string first = encodePing(FrameType::kPing, {1});
  const std::string cut = encodePageRequest({{3, 4, 5}});
  clientSend(first + cut.substr(0, cut.size() / 2));
  ASSERT_TRUE(waitFor([&] { return !accept_loop_frames_.empty(); }));
  ASSERT_TRUE(moveAccepted());
  ASSERT_TRUE(waitFor([&] { return moved_ != nullptr; }));
  clientSend(cut.substr(cut.size() / 2));
  clientSend(encodePing(FrameType::kPing, {2}));
  ASSERT_TRUE(waitFor([&] { return target_frames_.size() == 2 && client_frames_.size() == 1; }));
  std::lock_guard lock(mu_);
  EXPECT_EQ(accept_loop_frames_, std::vector<FrameType>{FrameType::kPing});
  EXPECT_EQ(target_frames_[0].type, FrameType::kPageRequest);
  EXPECT_EQ(target_frames_[0].payload_bytes, cut.size() - kHeaderSize);
  EXPECT_EQ(target_frames_[1].type, FrameType::kPing);
  EXPECT_TRUE(target_frames_[0].on_target_loop && target_frames_[1].on_target_loop);
  EXPECT_EQ(client_frames_, std::vector<FrameType>{FrameType::kPong});
  EXPECT_FALSE(client_closed_);
}

// The moved connection closes like any other: the peer sees it, and (under ASan) nothing of
// either bufferevent, the session or the socket is left behind.
TEST_F(ConnectionMove, ClosingTheMovedConnectionClosesThePeer) {
  ASSERT_TRUE(waitFor([&] { return accepted_ != nullptr; }));
  ASSERT_TRUE(moveAccepted());
  ASSERT_TRUE(waitFor([&] { return moved_ != nullptr; }));
  run(*target_loop_, [&] { moved_->close(); });
  EXPECT_TRUE(waitFor([&] { return client_closed_; }));
}

// Output still queued cannot move (its TLS records would be split between two loops): the move
// is refused and the connection closed, so that its peer reconnects instead of waiting.
TEST_F(ConnectionMove, RefusesWithOutputQueuedAndClosesTheConnection) {
  ASSERT_TRUE(waitFor([&] { return accepted_ != nullptr; }));
  Status moved;
  run(*accept_loop_, [&] {
    accepted_->sendEncoded(encodePing(FrameType::kPing, {7}));
    moved = moveToLoop(std::move(accepted_), *target_loop_,
                       [](Result<std::unique_ptr<Connection>>) { ADD_FAILURE() << "moved"; });
  });
  ASSERT_FALSE(moved);
  EXPECT_EQ(moved.error().code, Errc::kState);
  EXPECT_TRUE(waitFor([&] { return client_closed_; }));
}

// A target loop that stopped before the connection reached it: the connection is closed (the
// peer sees it) and nothing runs on the stopped loop.
TEST_F(ConnectionMove, ToAStoppedLoopClosesTheConnection) {
  ASSERT_TRUE(waitFor([&] { return accepted_ != nullptr; }));
  target_loop_->stop();
  ASSERT_TRUE(moveAccepted());
  EXPECT_TRUE(waitFor([&] { return client_closed_; }));
  std::lock_guard lock(mu_);
  EXPECT_EQ(moved_, nullptr);
}

}  // namespace
}  // namespace lazymig::transport

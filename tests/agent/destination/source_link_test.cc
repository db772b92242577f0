// The destination's link to its source, against real listeners on loopback: a listener that
// drops every connection (the link backs off, doubling, between attempts), a port nobody
// listens on (it gives up after give_up_after), a source that refuses for good (it gives up at
// once), and a source that cuts an open link (it comes back and opens again).
#include "agent/destination/source_link.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "agent/core/loop_sync.h"
#include "sys/unique_fd.h"
#include "test_support.h"

namespace lazymig::agent {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using test_support::waitUntil;

// A TCP listener on loopback that accepts every connection and closes it at once, noting when
// each arrived: a source host whose agent is not there yet, as the link sees it.
class DroppingListener {
 public:
  DroppingListener() {
    fd_ = sys::UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(fd_.get(), 16), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] {
      for (;;) {
        int c = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) return;  // shut down
        sys::UniqueFd conn(c);
        std::lock_guard lock(mu_);
        accepted_.push_back(Clock::now());
      }
    });
  }
  ~DroppingListener() {
    ::shutdown(fd_.get(), SHUT_RDWR);  // wakes accept()
    thread_.join();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::vector<Clock::time_point> accepted() {
    std::lock_guard lock(mu_);
    return accepted_;
  }

 private:
  sys::UniqueFd fd_;
  std::uint16_t port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<Clock::time_point> accepted_;
};

// What a link reported through its handlers; read from the test thread.
struct Seen {
  std::mutex mu;
  int opened = 0;
  int down = 0;
  int gave_up = 0;
  std::string give_up_error;
  Clock::time_point gave_up_at;
  SourceLink::Handlers handlers() {
    return {.on_open =
                [this] {
                  std::lock_guard l(mu);
                  ++opened;
                },
            .on_frame = [](const transport::FrameHeader&, std::span<const std::byte>) {},
            .on_down =
                [this](const Error&) {
                  std::lock_guard l(mu);
                  ++down;
                },
            .on_give_up =
                [this](const Error& e) {
                  std::lock_guard l(mu);
                  ++gave_up;
                  give_up_error = e.message();
                  gave_up_at = Clock::now();
                }};
  }
  template <typename F>
  auto read(F f) {
    std::lock_guard l(mu);
    return f();
  }
};

class Link : public ::testing::Test {
 protected:
  void SetUp() override { loop_ = std::move(*transport::EventLoop::start("link-test")); }
  void TearDown() override {
    runOnLoop(*loop_, [&] { link_.reset(); });
    loop_->stop();
  }
  void start(SourceLinkParams params) {
    runOnLoop(*loop_, [&] {
      link_ = std::make_unique<SourceLink>(*loop_, pki_.clientContext(), std::move(params),
                                           seen_.handlers(), log::root());
      link_->start();
    });
  }
  SourceLinkParams params(const std::string& address) {
    SourceLinkParams p;
    p.migration_id = "m1";
    p.token = "0123456789abcdef0123456789abcdef";
    p.source_address = address;
    p.expected_peer = test_support::TestPki::kSourceIdentity;
    p.memory_bytes = 16 * 4096;
    return p;
  }

  test_support::TestPki pki_;
  std::unique_ptr<transport::EventLoop> loop_;
  std::unique_ptr<SourceLink> link_;  // loop thread
  Seen seen_;
};

TEST_F(Link, BacksOffDoublingBetweenAttemptsUntilTheCap) {
  DroppingListener listener;
  auto p = params(listener.address());
  p.initial_backoff = 40ms;
  p.max_backoff = 320ms;
  p.give_up_after = 60s;
  start(p);
  ASSERT_TRUE(waitUntil([&] { return listener.accepted().size() >= 7; }, 20s));
  auto at = listener.accepted();
  // The gap before attempt i+1 is the backoff after i failures: 40, 80, 160, 320, 320, 320 ms,
  // each +-20% jitter. A slow machine only makes gaps longer, so only the floors are checked:
  // a backoff that never grew would break the third one, and a cap that never held shows in
  // the last two staying near the cap's floor.
  const std::chrono::milliseconds floors[] = {32ms, 64ms, 128ms, 256ms, 256ms, 256ms};
  for (std::size_t i = 0; i + 1 < 7; ++i) {
    EXPECT_GE(at[i + 1] - at[i], floors[i]) << "gap before attempt " << i + 1;
  }
  EXPECT_LT(at[6] - at[5], 2 * (at[4] - at[3]) + 100ms) << "the backoff kept growing past its cap";
  EXPECT_EQ(seen_.read([&] { return seen_.gave_up; }), 0);
  EXPECT_EQ(seen_.read([&] { return seen_.opened; }), 0);
}

TEST_F(Link, GivesUpOnceGiveUpAfterHasPassedWithoutALink) {
  // A port nobody listens on: every connect is refused.
  std::string address;
  {
    DroppingListener gone;
    address = gone.address();
  }
  auto p = params(address);
  p.initial_backoff = 20ms;
  p.max_backoff = 50ms;
  p.give_up_after = 400ms;
  const auto started = Clock::now();
  start(p);
  ASSERT_TRUE(waitUntil([&] { return seen_.read([&] { return seen_.gave_up; }) > 0; }, 20s));
  EXPECT_GE(seen_.read([&] { return seen_.gave_up_at; }) - started, 400ms);
  EXPECT_EQ(seen_.read([&] { return seen_.gave_up; }), 1);
  EXPECT_FALSE(seen_.read([&] { return seen_.give_up_error; }).empty());
  std::uint64_t attempts = 0;
  runOnLoop(*loop_, [&] { attempts = link_->reconnects(); });
  EXPECT_GE(attempts, 3u) << "it retried before giving up";
}

TEST_F(Link, ASourceThatRefusesForGoodIsGivenUpOnAtOnce) {
  test_support::SourceStandIn source(
      pki_, {.memory = std::vector<std::byte>(16 * 4096),
             .refuse_hello = transport::ErrorFrame{3, "token does not match"}});
  auto p = params(source.address());
  p.give_up_after = 60s;
  start(p);
  ASSERT_TRUE(waitUntil([&] { return seen_.read([&] { return seen_.gave_up; }) > 0; }, 20s));
  EXPECT_NE(seen_.read([&] { return seen_.give_up_error; }).find("token does not match"),
            std::string::npos);
  EXPECT_EQ(source.hellos(), 1u);
}

TEST_F(Link, ComesBackAfterTheSourceCutsAnOpenLink) {
  test_support::SourceStandIn source(pki_, {.memory = std::vector<std::byte>(16 * 4096)});
  auto p = params(source.address());
  p.initial_backoff = 20ms;
  start(p);
  ASSERT_TRUE(waitUntil([&] { return seen_.read([&] { return seen_.opened; }) == 1; }, 20s));
  source.dropConnections();
  ASSERT_TRUE(waitUntil([&] { return seen_.read([&] { return seen_.opened; }) == 2; }, 20s));
  EXPECT_EQ(seen_.read([&] { return seen_.down; }), 1);
  EXPECT_EQ(seen_.read([&] { return seen_.gave_up; }), 0);
  EXPECT_EQ(source.hellos(), 2u);
}

}  // namespace
}  // namespace lazymig::agent

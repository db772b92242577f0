// The guest_memfd handshake's FaultRequest socket: requests are delivered in order, a
// malformed request is refused by name and the next one still served, a stream that is not
// JSON closes the channel, and replies reach the VMM as JSON.
#include "agent/destination/vmm_fault_channel.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <mutex>

#include <chrono>
#include <functional>
#include <thread>
#include "agent/core/loop_sync.h"
#include "test_support.h"

namespace lazymig::agent {
namespace {

using test_support::waitUntil;

struct Fixture {
  sys::UnixSocket vmm;    // the VMM's end
  sys::UnixSocket agent;  // ours
  std::unique_ptr<transport::EventLoop> loop;
  std::unique_ptr<VmmFaultChannel> channel;
  std::mutex mu;
  std::vector<vmm::FaultRequest> requests;
  std::vector<std::string> refused;
  std::string closed;

  Fixture() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    vmm = sys::UnixSocket(sys::UniqueFd(fds[0]));
    agent = sys::UnixSocket(sys::UniqueFd(fds[1]));
    loop = std::move(*transport::EventLoop::start("vmm-fault-test"));
    runOnLoop(*loop, [&] {
      channel = std::make_unique<VmmFaultChannel>(
          *loop, agent,
          VmmFaultChannel::Handlers{.on_request =
                                        [&](const vmm::FaultRequest& r) {
                                          std::lock_guard l(mu);
                                          requests.push_back(r);
                                        },
                                    .on_bad_request =
                                        [&](const Error& e) {
                                          std::lock_guard l(mu);
                                          refused.push_back(e.message());
                                        },
                                    .on_closed =
                                        [&](const Error& e) {
                                          std::lock_guard l(mu);
                                          closed = e.message();
                                        }},
          log::root());
      ASSERT_TRUE(channel->start());
    });
  }
  ~Fixture() {
    runOnLoop(*loop, [&] { channel.reset(); });
  }
  std::size_t count() {
    std::lock_guard l(mu);
    return requests.size();
  }
};

TEST(VmmFaultChannel, BadRequestIsRefusedByNameAndTheNextOneServed) {
  Fixture f;
  ASSERT_TRUE(f.vmm.sendAll(R"({"vcpu":1,"offset":4096,"flags":0,"gpa":null})"
                            R"({"vcpu":"two","offset":0,"flags":0})"
                            R"({"vcpu":3,"offset":0,"flags":0,"token":8192})"));
  ASSERT_TRUE(waitUntil([&] { return f.count() == 2; }, std::chrono::seconds(5)));
  std::lock_guard l(f.mu);
  EXPECT_EQ(f.requests[0].vcpu, 1u);
  EXPECT_EQ(f.requests[0].offset, 4096u);
  EXPECT_EQ(f.requests[1].vcpu, 3u);
  ASSERT_TRUE(f.requests[1].gpa.has_value());  // the older name "token"
  EXPECT_EQ(*f.requests[1].gpa, 8192u);
  ASSERT_EQ(f.refused.size(), 1u);
  EXPECT_NE(f.refused[0].find("vcpu"), std::string::npos) << f.refused[0];
  EXPECT_TRUE(f.closed.empty()) << f.closed;
}

TEST(VmmFaultChannel, RepliesReachTheVmmAsJson) {
  Fixture f;
  runOnLoop(*f.loop, [&] {
    f.channel->reply({.vcpu = 2, .offset = 8192, .len = 4096, .flags = 5, .gpa = 1, .zero = true});
  });
  ASSERT_TRUE(f.vmm.waitReadable(std::chrono::seconds(5)));
  auto text = f.vmm.receiveSome(4096);
  ASSERT_TRUE(text);
  auto reply = vmm::parseFaultReply(*text);
  ASSERT_TRUE(reply) << *text;
  EXPECT_EQ(reply->vcpu, 2u);
  EXPECT_EQ(reply->offset, 8192u);
  EXPECT_EQ(reply->len, 4096u);
  EXPECT_EQ(reply->flags, 5u);
  EXPECT_TRUE(reply->zero);
}

TEST(VmmFaultChannel, AStreamThatIsNotJsonClosesTheChannel) {
  Fixture f;
  ASSERT_TRUE(f.vmm.sendAll("not json at all"));
  ASSERT_TRUE(waitUntil(
      [&] {
        std::lock_guard l(f.mu);
        return !f.closed.empty();
      },
      std::chrono::seconds(5)));
}

TEST(VmmFaultChannel, VmmClosingTheSocketIsReported) {
  Fixture f;
  f.vmm = sys::UnixSocket();
  ASSERT_TRUE(waitUntil(
      [&] {
        std::lock_guard l(f.mu);
        return f.closed.find("closed") != std::string::npos;
      },
      std::chrono::seconds(5)));
}

}  // namespace
}  // namespace lazymig::agent

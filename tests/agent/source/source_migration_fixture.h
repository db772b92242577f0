// SourceMigration tests' fixture: a SourcePeer whose connections the test accepts on a raw
// transport::Server and hands to SourceMigration::attach itself (PeerListener's own checks are
// peer_listener_test's).
#pragma once

#include "tests/agent/source/source_peer.h"

namespace lazymig::agent::source_test {

using transport::ChannelKind;
using transport::FrameType;

class SourceMigrationFixture : public SourcePeer {
 protected:
  static constexpr std::uint64_t kBytes = SourcePeer::kBytes;

  void SetUp() override {
    SourcePeer::SetUp();
    runOnLoop(*peer_loop_, [&] {
      transport::Server::Options o;
      o.on_connection = [this](std::unique_ptr<transport::Connection> c) {
        std::lock_guard lock(mu_);
        accepted_.push_back(std::move(c));
        cv_.notify_all();
      };
      server_ = std::move(*transport::Server::listen(*peer_loop_, source_tls_, o));
    });
  }
  void TearDown() override {
    runOnLoop(*peer_loop_, [&] {
      accepted_.clear();
      server_.reset();
    });
    SourcePeer::TearDown();
  }

  // A destination dialled with `tls`, and the source's end of its connection.
  std::pair<std::unique_ptr<TestDestination>, std::unique_ptr<transport::Connection>> connect(
      std::shared_ptr<transport::TlsContext> tls = nullptr) {
    auto client = std::make_unique<TestDestination>(*client_loop_, tls ? tls : destination_tls_,
                                                    server_->port());
    std::unique_ptr<transport::Connection> server_end;
    waitOn(mu_, cv_, [&] { return !accepted_.empty(); });
    std::lock_guard lock(mu_);
    if (!accepted_.empty()) {
      server_end = std::move(accepted_.front());
      accepted_.erase(accepted_.begin());
    }
    return {std::move(client), std::move(server_end)};
  }
  std::optional<HelloRefusal> attach(std::unique_ptr<transport::Connection> conn,
                                     const transport::Hello& hello) {
    std::optional<HelloRefusal> out;
    runOnLoop(*peer_loop_, [&] { out = migration_->attach(std::move(conn), hello); });
    return out;
  }
  // A destination's channel the source accepted.
  std::unique_ptr<TestDestination> attached(ChannelKind kind) {
    auto [client, conn] = connect();
    EXPECT_FALSE(attach(std::move(conn), client->hello(kind, kBytes)));
    EXPECT_TRUE(client->waitFor(FrameType::kHelloOk));
    return std::move(client);
  }
  nlohmann::json progress() { return migration_->toJson()["progress"]; }

  std::unique_ptr<transport::Server> server_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<transport::Connection>> accepted_;
};

}  // namespace lazymig::agent::source_test

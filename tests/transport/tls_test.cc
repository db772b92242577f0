// TLS on real loopback sockets with certificates made by transport/pki: mutual TLS works,
// and every kind of wrong peer is refused (invariant 5).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>

#include "sys/unique_fd.h"
#include "transport/connection.h"
#include "transport/pki.h"

namespace lazymig::transport {
namespace {

using namespace std::chrono_literals;

class Tls : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazymig-tls-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    ca_ = *generateCa(dir_, "ca");
    other_ca_ = *generateCa(dir_, "other-ca");
    server_ = leaf(ca_, "server", "spiffe://t/server");
    client_ = leaf(ca_, "client", "spiffe://t/client");
    loop_ = std::move(*EventLoop::start("tls-test"));
  }
  void TearDown() override {
    post([&] {
      accepted_.clear();
      listener_.reset();
    });
    loop_->stop();
    std::filesystem::remove_all(dir_);
  }
  TlsFiles leaf(const PemFiles& ca, const std::string& name, const std::string& uri, int offset = 0,
                int days = 30) {
    LeafSpec s;
    s.uris = {uri};
    s.not_before_offset_days = offset;
    s.valid_days = days;
    auto l = issueLeaf(ca, dir_, name, s);
    EXPECT_TRUE(l) << l.error().message();
    return TlsFiles{ca.cert_file, l->cert_file, l->key_file};
  }
  void post(std::function<void()> fn) {
    std::promise<void> p;
    loop_->post([&] {
      fn();
      p.set_value();
    });
    p.get_future().wait();
  }
  std::uint16_t listen() {
    auto tls = TlsContext::create(TlsContext::Side::kServer, server_);
    EXPECT_TRUE(tls) << tls.error().message();
    std::uint16_t port = 0;
    post([&] {
      Server::Options o;
      o.on_connection = [&](std::unique_ptr<Connection> c) {
        Connection* raw = c.get();
        c->setHandlers({[this, raw](const FrameHeader& h, std::span<const std::byte> p) {
                          if (h.type == FrameType::kPing)
                            raw->sendEncoded(encodePing(FrameType::kPong, *decodePing(p)));
                          if (h.type == FrameType::kPageData) {
                            std::lock_guard lock(mu_);
                            big_frames_ += p.size() > (1 << 20);
                            cv_.notify_all();
                          }
                        },
                        [this](const Error& e) {
                          std::lock_guard lock(mu_);
                          closed_.push_back(e.message());
                          cv_.notify_all();
                        },
                        nullptr});
        std::lock_guard lock(mu_);
        accepted_.push_back(std::move(c));
        cv_.notify_all();
      };
      o.on_refused = [&](RefusalReason r, const std::string& detail) {
        std::lock_guard lock(mu_);
        refusals_.emplace_back(r, detail);
        cv_.notify_all();
      };
      listener_ = std::move(*Server::listen(*loop_, *tls, o));
      port = listener_->port();
    });
    return port;
  }
  Result<std::unique_ptr<Connection>> dial(const TlsFiles& files, std::uint16_t port,
                                           const std::string& expected = "spiffe://t/server") {
    auto tls = TlsContext::create(TlsContext::Side::kClient, files);
    if (!tls) return std::unexpected(tls.error());
    std::promise<Result<std::unique_ptr<Connection>>> p;
    connect(*loop_, *tls, ConnectOptions{"127.0.0.1:" + std::to_string(port), {}, 5s, expected},
            [&](Result<std::unique_ptr<Connection>> c) { p.set_value(std::move(c)); });
    return p.get_future().get();
  }
  bool waitFor(const std::function<bool()>& pred) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 10s, pred);
  }
  std::optional<RefusalReason> lastRefusal() {
    waitFor([&] { return !refusals_.empty(); });
    std::lock_guard lock(mu_);
    if (refusals_.empty()) return std::nullopt;
    return refusals_.back().first;
  }

  std::string dir_;
  PemFiles ca_, other_ca_;
  TlsFiles server_, client_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Server> listener_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Connection>> accepted_;
  std::vector<std::pair<RefusalReason, std::string>> refusals_;
  std::vector<std::string> closed_;
  int big_frames_ = 0;
};

TEST_F(Tls, MutualTlsCarriesFramesBothWaysIncludingFourMiB) {
  auto port = listen();
  auto c = dial(client_, port);
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_TRUE((*c)->peer().matches("spiffe://t/server"));
  ASSERT_TRUE(waitFor([&] { return accepted_.size() == 1; }));
  EXPECT_TRUE(accepted_[0]->peer().matches("spiffe://t/client"));
  std::promise<std::uint64_t> pong;
  std::vector<std::byte> big(4 << 20, std::byte{1});
  post([&] {
    (*c)->setHandlers({[&](const FrameHeader& h, std::span<const std::byte> p) {
                         if (h.type == FrameType::kPong) pong.set_value(decodePing(p)->nonce);
                       },
                       nullptr, nullptr});
    auto prefix = encodePageDataPrefix(0, 1024, 4096);
    (*c)->sendWithBody(prefix, big, nullptr);
    (*c)->sendEncoded(encodePing(FrameType::kPing, {42}));
  });
  auto f = pong.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(f.get(), 42u);
  EXPECT_TRUE(waitFor([&] { return big_frames_ == 1; }));
  post([&] { c->reset(); });
}

// Closing a socket that has unread input makes the kernel answer with RST, which throws away
// whatever is still in the send queue: the tail of the last frames. A closed connection must
// deliver everything it queued even when the peer sent something it never read (here a Ping
// that arrives while the client's loop is busy; in the agents a Ping or a session ticket).
TEST_F(Tls, CloseDeliversEverythingQueuedThoughThePeerSentSomethingUnread) {
  auto port = listen();
  auto client_loop = std::move(*EventLoop::start("tls-test-client"));
  auto tls = TlsContext::create(TlsContext::Side::kClient, client_);
  ASSERT_TRUE(tls) << tls.error().message();
  std::promise<Result<std::unique_ptr<Connection>>> dialed;
  connect(*client_loop, *tls,
          ConnectOptions{"127.0.0.1:" + std::to_string(port), {}, 5s, "spiffe://t/server"},
          [&](Result<std::unique_ptr<Connection>> c) { dialed.set_value(std::move(c)); });
  auto c = dialed.get_future().get();
  ASSERT_TRUE(c) << c.error().message();
  ASSERT_TRUE(waitFor([&] { return accepted_.size() == 1; }));
  std::vector<std::byte> body(4 << 20, std::byte{9});
  std::promise<void> closed;
  client_loop->post([&] {
    // Busy long enough for the server's Ping to land unread in this socket.
    std::this_thread::sleep_for(300ms);
    auto prefix = encodePageDataPrefix(0, 1024, 4096);
    for (int i = 0; i < 8; ++i) (*c)->sendWithBody(prefix, body, nullptr);
    (*c)->close();
    closed.set_value();
  });
  post([&] { accepted_[0]->sendEncoded(encodePing(FrameType::kPing, {7})); });
  closed.get_future().wait();
  EXPECT_TRUE(waitFor([&] { return big_frames_ == 8; })) << big_frames_ << " of 8 frames arrived";
  client_loop->post([&] { c->reset(); });
  client_loop->stop();
}

// A closed connection still flushing a zero-copy body keeps the body's owner alive (the
// source releasing guest memory must not unmap what is being sent), and lets it go after.
TEST_F(Tls, QueuedBodyKeepsItsOwnerUntilFlushedAfterClose) {
  auto port = listen();
  auto c = dial(client_, port);
  ASSERT_TRUE(c) << c.error().message();
  auto body = std::make_shared<std::vector<std::byte>>(4 << 20, std::byte{7});
  std::weak_ptr<std::vector<std::byte>> watch = body;
  std::promise<bool> alive_after_close;
  post([&] {
    auto prefix = encodePageDataPrefix(0, 1024, 4096);
    for (int i = 0; i < 8; ++i) (*c)->sendWithBody(prefix, *body, body);
    (*c)->close();
    body.reset();
    alive_after_close.set_value(!watch.expired());
  });
  EXPECT_TRUE(alive_after_close.get_future().get()) << "released while still queued";
  EXPECT_TRUE(waitFor([&] { return big_frames_ == 8; })) << big_frames_ << " of 8 frames arrived";
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!watch.expired() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(watch.expired()) << "the owner was never released";
  post([&] { c->reset(); });
}

TEST_F(Tls, ClientFromAnotherCaIsRefused) {
  auto port = listen();
  auto c = dial(leaf(other_ca_, "stranger", "spiffe://t/client"), port);
  // The client trusts only other-ca, so it also rejects the server; what matters is that no
  // connection is accepted and the server says why.
  EXPECT_FALSE(c);
  auto r = lastRefusal();
  ASSERT_TRUE(r);
  EXPECT_TRUE(*r == RefusalReason::kBadCertificate || *r == RefusalReason::kTlsHandshake);
  EXPECT_TRUE(accepted_.empty());
}

TEST_F(Tls, ClientCertSignedByAnotherCaButTrustingOursIsRefused) {
  auto port = listen();
  TlsFiles f = leaf(other_ca_, "stranger2", "spiffe://t/client");
  f.ca_file = ca_.cert_file;
  auto c = dial(f, port);
  auto r = lastRefusal();
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, RefusalReason::kBadCertificate);
  EXPECT_TRUE(accepted_.empty());
}

TEST_F(Tls, ServerFromAnotherCaIsRefusedByTheClient) {
  server_ = leaf(other_ca_, "bad-server", "spiffe://t/server");
  auto port = listen();
  auto c = dial(client_, port);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, Errc::kAuth) << c.error().message();
}

TEST_F(Tls, WrongServerIdentityIsRefused) {
  auto port = listen();
  auto c = dial(client_, port, "spiffe://t/someone-else");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, Errc::kAuth);
  EXPECT_NE(c.error().message().find("expected spiffe://t/someone-else"), std::string::npos);
}

TEST_F(Tls, ExpiredCertificateIsRefused) {
  auto port = listen();
  auto c = dial(leaf(ca_, "expired", "spiffe://t/client", -30, 1), port);
  auto r = lastRefusal();
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, RefusalReason::kBadCertificate);
  std::lock_guard lock(mu_);
  EXPECT_NE(refusals_.back().second.find("expired"), std::string::npos) << refusals_.back().second;
}

TEST_F(Tls, PlaintextIsRefused) {
  auto port = listen();
  sys::UniqueFd fd(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_GT(::write(fd.get(), "GET / HTTP/1.0\r\n\r\n", 18), 0);
  auto r = lastRefusal();
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, RefusalReason::kPlaintext);
}

TEST_F(Tls, Tls12OnlyClientIsRefused) {
  auto port = listen();
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_use_certificate_chain_file(ctx, client_.cert_file.c_str());
  SSL_CTX_use_PrivateKey_file(ctx, client_.key_file.c_str(), SSL_FILETYPE_PEM);
  sys::UniqueFd fd(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd.get());
  EXPECT_NE(SSL_connect(ssl), 1);
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  auto r = lastRefusal();
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, RefusalReason::kTlsHandshake);
  EXPECT_TRUE(accepted_.empty());
}

TEST_F(Tls, OversizedFrameClosesOnlyThatConnection) {
  auto port = listen();
  auto good = dial(client_, port);
  auto bad = dial(client_, port);
  ASSERT_TRUE(good && bad);
  ASSERT_TRUE(waitFor([&] { return accepted_.size() == 2; }));
  post([&] {
    std::array<std::byte, kHeaderSize> h;
    encodeHeader(FrameType::kPageData, 0x7fffffff, h);
    (*bad)->sendEncoded(std::string_view(reinterpret_cast<const char*>(h.data()), h.size()));
  });
  ASSERT_TRUE(waitFor([&] { return !closed_.empty(); }));
  EXPECT_NE(closed_[0].find("exceeds the limit"), std::string::npos) << closed_[0];
  std::promise<void> pong;
  post([&] {
    (*good)->setHandlers({[&](const FrameHeader& fh, std::span<const std::byte>) {
                            if (fh.type == FrameType::kPong) pong.set_value();
                          },
                          nullptr, nullptr});
    (*good)->sendEncoded(encodePing(FrameType::kPing, {1}));
  });
  EXPECT_EQ(pong.get_future().wait_for(10s), std::future_status::ready);
  post([&] {
    good->reset();
    bad->reset();
  });
}

TEST_F(Tls, DestroyingAConnectionInsideItsFrameHandlerIsSafe) {
  auto port = listen();
  auto c = dial(client_, port);
  ASSERT_TRUE(c);
  std::promise<void> done;
  auto owned = std::make_shared<std::unique_ptr<Connection>>(std::move(*c));
  post([&] {
    (*owned)->setHandlers({[&, owned](const FrameHeader&, std::span<const std::byte>) {
                             owned->reset();  // ASan would flag any use after this
                             done.set_value();
                           },
                           nullptr, nullptr});
    (*owned)->sendEncoded(encodePing(FrameType::kPing, {1}));
    (*owned)->sendEncoded(encodePing(FrameType::kPing, {2}));
  });
  EXPECT_EQ(done.get_future().wait_for(10s), std::future_status::ready);
}

}  // namespace
}  // namespace lazymig::transport

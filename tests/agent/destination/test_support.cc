#include "test_support.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <thread>

#include "agent/core/loop_sync.h"
#include "transport/pki.h"

namespace lazymig::agent::test_support {

bool waitUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

std::vector<std::byte> sourceMemory(std::uint64_t pages, std::uint64_t page_size) {
  std::vector<std::byte> m(pages * page_size);
  for (std::uint64_t p = 0; p < pages; ++p) {
    if (p % 4 == 3) continue;
    std::memset(m.data() + p * page_size, static_cast<int>(0x40 + p % 0x80), page_size);
  }
  return m;
}

DestinationContext contextFor(const GuestLayout& layout, store::PageMap& pages,
                              PageInstaller& installer, const sys::Uffd& uffd,
                              MigrationStats& stats, transport::EventLoop& loop,
                              std::shared_ptr<transport::TlsContext> tls, SourceLinkParams link) {
  return DestinationContext{.layout = layout,
                            .pages = pages,
                            .installer = installer,
                            .uffd = uffd,
                            .recorder = TransferRecorder(stats, nullptr),
                            .log = log::root(),
                            .urgent_loop = loop,
                            .bulk_loop = loop,
                            .tls = std::move(tls),
                            .link = std::move(link)};
}

using transport::FrameType;

TestPki::TestPki() {
  char tmpl[] = "/tmp/lazymig-dest-test-XXXXXX";
  dir_ = ::mkdtemp(tmpl);
  auto ca = transport::generateCa(dir_, "ca");
  EXPECT_TRUE(ca) << ca.error().message();
  auto leaf = [&](const std::string& name, const std::string& uri) {
    transport::LeafSpec spec;
    spec.uris = {uri};
    auto l = transport::issueLeaf(*ca, dir_, name, spec);
    EXPECT_TRUE(l) << l.error().message();
    return transport::TlsFiles{ca->cert_file, l->cert_file, l->key_file};
  };
  server_ = leaf("source", kSourceIdentity);
  client_ = leaf("destination", "spiffe://test/destination");
}

TestPki::~TestPki() { std::filesystem::remove_all(dir_); }

std::shared_ptr<transport::TlsContext> TestPki::clientContext() const {
  return *transport::TlsContext::create(transport::TlsContext::Side::kClient, client_);
}

std::shared_ptr<transport::TlsContext> TestPki::serverContext() const {
  return *transport::TlsContext::create(transport::TlsContext::Side::kServer, server_);
}

struct SourceStandIn::Peer {
  std::unique_ptr<transport::Connection> conn;
  transport::ChannelKind kind = transport::ChannelKind::kUrgent;
  bool open = false;
  std::vector<std::uint64_t> installed;  // the Resume bitmap
  bool serve_times = false;              // the destination asked for ServeTimes
};

SourceStandIn::SourceStandIn(const TestPki& pki, Options options)
    : options_(std::move(options)),
      memory_(std::make_shared<const std::vector<std::byte>>(options_.memory)),
      loop_(std::move(*transport::EventLoop::start("source-stand-in"))) {
  runOnLoop(*loop_, [&] {
    transport::Server::Options opts;
    opts.on_connection = [this](std::unique_ptr<transport::Connection> c) { accept(std::move(c)); };
    auto server = transport::Server::listen(*loop_, pki.serverContext(), std::move(opts));
    EXPECT_TRUE(server) << server.error().message();
    if (server) server_ = std::move(*server);
  });
}

SourceStandIn::~SourceStandIn() {
  runOnLoop(*loop_, [&] {
    dropConnections();
    server_.reset();
  });
  loop_->stop();
}

std::string SourceStandIn::address() const {
  return "127.0.0.1:" + std::to_string(server_->port());
}

SourceLinkParams SourceStandIn::linkParams(transport::ChannelKind kind) const {
  SourceLinkParams p;
  p.migration_id = options_.migration_id;
  p.token = "0123456789abcdef0123456789abcdef";
  p.source_address = address();
  p.expected_peer = TestPki::kSourceIdentity;
  p.kind = kind;
  p.page_size = options_.page_size;
  p.memory_bytes = memory_->size();
  p.initial_backoff = std::chrono::milliseconds(20);
  p.max_backoff = std::chrono::milliseconds(200);
  return p;
}

transport::Layout SourceStandIn::layout() const {
  return {options_.page_size, memory_->size() / options_.page_size};
}

void SourceStandIn::dropConnections() {
  runOnLoop(*loop_, [&] {
    for (auto& p : peers_) {
      if (p->conn) p->conn->close();
    }
    peers_.clear();
  });
}

void SourceStandIn::accept(std::unique_ptr<transport::Connection> conn) {
  auto peer = std::make_unique<Peer>();
  Peer* p = peer.get();
  peer->conn = std::move(conn);
  peer->conn->setHandlers(
      {.on_frame = [this, p](const transport::FrameHeader& h,
                             std::span<const std::byte> payload) { onFrame(*p, h, payload); },
       .on_closed = [p](const Error&) { p->open = false; },
       .on_drained = nullptr});
  peers_.push_back(std::move(peer));
}

void SourceStandIn::onFrame(Peer& peer, const transport::FrameHeader& h,
                            std::span<const std::byte> payload) {
  auto& conn = *peer.conn;
  switch (h.type) {
    case FrameType::kHello: {
      ++hellos_;
      auto hello = transport::decodeHello(payload);
      ASSERT_TRUE(hello) << hello.error().message();
      if (options_.refuse_hello)
        return conn.sendEncoded(transport::encodeError(*options_.refuse_hello));
      // A pre-copy destination's bulk link before its VMM says no layout (issue 19).
      const bool layout_ok = hello->layoutUnknown() || (hello->page_size == options_.page_size &&
                                                        hello->memory_bytes == memory_->size());
      if (hello->migration_id != options_.migration_id || !layout_ok) {
        return conn.sendEncoded(transport::encodeError({5, "layout or migration differs"}));
      }
      peer.kind = hello->channel;
      peer.open = true;
      peer.installed.assign((layout().page_count + 63) / 64, 0);
      return conn.sendEncoded(transport::encodeHelloOk({options_.page_size, memory_->size()}));
    }
    case FrameType::kPageRequest: {
      auto req = transport::decodePageRequest(payload, layout(), {});
      ASSERT_TRUE(req) << req.error().message();
      pages_requested_ += req->pages.size();
      return serveDemand(peer, *req);
    }
    case FrameType::kResume: {
      auto r = transport::decodeResume(payload, layout());
      ASSERT_TRUE(r) << r.error().message();
      std::copy(r->words.begin(), r->words.end(),
                peer.installed.begin() + static_cast<std::ptrdiff_t>(r->first_page / 64));
      if (r->last) {
        last_resume_ = peer.installed;
        ++resumes_;
      }
      if (r->last && options_.stream_bulk) streamBulk(peer);
      return;
    }
    case FrameType::kComplete:
      ++completes_;
      return conn.sendEncoded(transport::encodeCompleteAck());
    case FrameType::kPing: {
      auto ping = transport::decodePing(payload);
      ASSERT_TRUE(ping) << ping.error().message();
      if (ping->nonce == transport::kServeTimesWanted && options_.serve_times) {
        peer.serve_times = true;
      }
      return conn.sendEncoded(transport::encodePing(FrameType::kPong, *ping));
    }
    default:
      ADD_FAILURE() << "the stand-in source got " << transport::frameTypeName(h.type);
  }
}

void SourceStandIn::sendPage(transport::Connection& conn, std::uint64_t page) {
  sendPageOf(conn, page, memory_);
}

void SourceStandIn::sendPageOf(transport::Connection& conn, std::uint64_t page,
                               const std::shared_ptr<const std::vector<std::byte>>& image) {
  const std::size_t size = options_.page_size;
  std::span<const std::byte> bytes(image->data() + page * size, size);
  if (std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; })) {
    return conn.sendEncoded(transport::encodeZeroRange({page, 1}));
  }
  auto prefix = transport::encodePageDataPrefix(page, 1, options_.page_size);
  conn.sendWithBody(prefix, bytes, image);
}

std::vector<std::uint64_t> SourceStandIn::lastResume() {
  std::vector<std::uint64_t> out;
  runOnLoop(*loop_, [&] { out = last_resume_; });
  return out;
}

SourceStandIn::Peer* SourceStandIn::bulkPeer() {
  for (auto it = peers_.rbegin(); it != peers_.rend(); ++it) {
    if ((*it)->open && (*it)->kind == transport::ChannelKind::kBulk) return it->get();
  }
  return nullptr;
}

bool SourceStandIn::sendPages(const std::vector<std::uint64_t>& pages,
                              std::shared_ptr<const std::vector<std::byte>> image) {
  bool sent = false;
  runOnLoop(*loop_, [&] {
    Peer* peer = bulkPeer();
    if (!peer) return;
    for (auto p : pages) sendPageOf(*peer->conn, p, image);
    sent = true;
  });
  return sent;
}

bool SourceStandIn::sendStalePages(const std::vector<std::uint64_t>& stale, bool last) {
  transport::StalePages frame;
  frame.last = last;
  frame.words.assign((layout().page_count + 63) / 64, 0);
  for (auto p : stale) frame.words[p / 64] |= std::uint64_t{1} << (p % 64);
  bool sent = false;
  runOnLoop(*loop_, [&] {
    Peer* peer = bulkPeer();
    if (!peer) return;
    peer->conn->sendEncoded(transport::encodeStalePages(frame));
    sent = true;
  });
  return sent;
}

bool SourceStandIn::sendBulkDone() {
  bool sent = false;
  runOnLoop(*loop_, [&] {
    Peer* peer = bulkPeer();
    if (!peer) return;
    peer->conn->sendEncoded(transport::encodeBulkDone({0}));
    sent = true;
  });
  return sent;
}

void SourceStandIn::setMemory(std::vector<std::byte> memory) {
  auto image = std::make_shared<const std::vector<std::byte>>(std::move(memory));
  runOnLoop(*loop_, [&] { memory_ = std::move(image); });
}

void SourceStandIn::serveDemand(Peer& peer, const transport::PageRequest& request) {
  using Clock = std::chrono::steady_clock;
  const auto arrived = Clock::now();
  for (auto page : request.pages) {
    const auto started = Clock::now();
    if (options_.serve_delay.count() > 0) std::this_thread::sleep_for(options_.serve_delay);
    sendPage(*peer.conn, page);
    if (!peer.serve_times) continue;
    const auto ns = [](Clock::duration d) {
      return static_cast<std::uint64_t>(std::chrono::nanoseconds(d).count());
    };
    const std::uint64_t named = options_.malformed_serve_times ? layout().page_count : page;
    peer.conn->sendEncoded(
        transport::encodeServeTimes({named, ns(started - arrived), ns(Clock::now() - started)}));
  }
}

void SourceStandIn::streamBulk(Peer& peer) {
  std::uint64_t sent = 0;
  for (std::uint64_t p = 0; p < layout().page_count; ++p) {
    if ((peer.installed[p / 64] >> (p % 64)) & 1) continue;
    sendPage(*peer.conn, p);
    ++sent;
  }
  peer.conn->sendEncoded(transport::encodeBulkDone({sent}));
}

}  // namespace lazymig::agent::test_support

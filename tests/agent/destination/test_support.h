// What the destination's unit tests share: waiting on a condition, a DestinationContext, and
// a source agent stand-in.
//
// The source stand-in is a real TLS listener on loopback
// (certificates made by transport/pki) that speaks the source's side of docs/protocol.md for
// one migration, from bytes it holds. It is not the real SourceMigration (agent/source/ is
// another box, tested on its own): it answers Hello, PageRequest, Resume and Complete, and
// nothing more. For pre-copy (issue 19) a test drives its bulk channel itself: round pages
// from memory images the test makes, StalePages, then post-copy pages.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/destination/destination_context.h"
#include "agent/destination/source_link.h"
#include "transport/connection.h"

namespace lazymig::agent::test_support {

// Polls `pred` until it holds or `timeout` passes; false on timeout.
bool waitUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

// `pages` pages of `page_size` bytes, each filled with its own byte, every fourth one zero.
std::vector<std::byte> sourceMemory(std::uint64_t pages, std::uint64_t page_size);

// A DestinationContext on one loop (urgent and bulk alike), without metrics.
DestinationContext contextFor(const GuestLayout& layout, store::PageMap& pages,
                              PageInstaller& installer, const sys::Uffd& uffd,
                              MigrationStats& stats, transport::EventLoop& loop,
                              std::shared_ptr<transport::TlsContext> tls, SourceLinkParams link);

// A CA with one source (server) and one destination (client) certificate, in a temporary
// directory removed with it.
class TestPki {
 public:
  TestPki();
  ~TestPki();
  TestPki(const TestPki&) = delete;
  TestPki& operator=(const TestPki&) = delete;
  std::shared_ptr<transport::TlsContext> clientContext() const;
  std::shared_ptr<transport::TlsContext> serverContext() const;
  static constexpr const char* kSourceIdentity = "spiffe://test/source";

 private:
  std::string dir_;
  transport::TlsFiles server_;
  transport::TlsFiles client_;
};

class SourceStandIn {
 public:
  struct Options {
    std::string migration_id = "m1";
    std::uint32_t page_size = 4096;
    std::vector<std::byte> memory;  // what it serves, page_size * pages
    // The bulk channel streams every page the Resume bitmap does not have, then BulkDone.
    bool stream_bulk = true;
    // Every Hello is answered with this Error frame instead of HelloOk.
    std::optional<transport::ErrorFrame> refuse_hello;
    // Follows each demand reply with ServeTimes once the destination asks (protocol 1.2), as
    // the real source does; false plays a protocol 1.1 source, which answers the ask as a Ping.
    bool serve_times = true;
    // A slow source: each demand page takes this long to serve (the stand-in sleeps after
    // reading the request, in what it reports as its own work on the page).
    std::chrono::milliseconds serve_delay{0};
    // A broken source: its ServeTimes name a page outside the memory.
    bool malformed_serve_times = false;
  };
  SourceStandIn(const TestPki& pki, Options options);
  ~SourceStandIn();
  SourceStandIn(const SourceStandIn&) = delete;
  SourceStandIn& operator=(const SourceStandIn&) = delete;

  std::string address() const;
  // A link to this stand-in for `kind`, with short backoffs (tests).
  SourceLinkParams linkParams(transport::ChannelKind kind) const;
  std::uint64_t hellos() const { return hellos_.load(); }
  std::uint64_t pagesRequested() const { return pages_requested_.load(); }
  std::uint64_t completes() const { return completes_.load(); }
  // Resume exchanges completed (the frame with `last` arrived), over every bulk channel.
  std::uint64_t resumes() const { return resumes_.load(); }
  // The bitmap of the newest complete Resume (what the destination said it has).
  std::vector<std::uint64_t> lastResume();
  // The bulk channel driven by the test (stream_bulk = false), on its newest open bulk peer:
  // these pages of `image` (the memory as it was when "read", page_size bytes each) as
  // PageData, or ZeroRange for all-zero ones; false when no bulk channel is open.
  bool sendPages(const std::vector<std::uint64_t>& pages,
                 std::shared_ptr<const std::vector<std::byte>> image);
  // One StalePages chunk naming `stale` (its first_page 0, words for every page).
  bool sendStalePages(const std::vector<std::uint64_t>& stale, bool last);
  bool sendBulkDone();
  // What the urgent channel serves from now on (the paused memory).
  void setMemory(std::vector<std::byte> memory);
  // Closes every connection (a cut link); the destination reconnects.
  void dropConnections();

 private:
  struct Peer;
  void accept(std::unique_ptr<transport::Connection> conn);
  void onFrame(Peer& peer, const transport::FrameHeader& h, std::span<const std::byte> payload);
  void sendPage(transport::Connection& conn, std::uint64_t page);
  void sendPageOf(transport::Connection& conn, std::uint64_t page,
                  const std::shared_ptr<const std::vector<std::byte>>& image);
  Peer* bulkPeer();  // loop thread
  void serveDemand(Peer& peer, const transport::PageRequest& request);
  void streamBulk(Peer& peer);
  transport::Layout layout() const;

  Options options_;
  std::shared_ptr<const std::vector<std::byte>> memory_;
  std::unique_ptr<transport::EventLoop> loop_;
  std::unique_ptr<transport::Server> server_;
  std::vector<std::unique_ptr<Peer>> peers_;  // loop thread
  std::atomic<std::uint64_t> hellos_{0};
  std::atomic<std::uint64_t> pages_requested_{0};
  std::atomic<std::uint64_t> completes_{0};
  std::atomic<std::uint64_t> resumes_{0};
  std::vector<std::uint64_t> last_resume_;  // loop thread
};

}  // namespace lazymig::agent::test_support

// Serves the guest's page faults on the destination. It lives on the urgent loop thread, so
// that reading a fault, asking the source and installing the reply never cross a thread: the
// whole round trip is one thread's work plus the network. Faults arrive by two routes with
// the same priority and latency metric: uffd events, and (guest_memfd handshake) the VMM's
// FaultRequests, each answered with a FaultReply once its page is populated.
//
// Invariant 3: every fault read is answered (installed or woken) -- or the migration fails
// loudly. A fault is never answered with zeros to "recover", except on a page the guest
// itself discarded.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <unordered_map>
#include <vector>

#include "agent/core/migration_stats.h"
#include "agent/destination/population/guest_layout.h"
#include "agent/destination/population/page_installer.h"
#include "base/log.h"
#include "metrics/metrics.h"
#include "store/page_map.h"
#include "sys/uffd.h"
#include "transport/connection.h"
#include "transport/frame.h"
#include "vmm/handshake.h"

struct event;

namespace lazymig::agent {

class FaultService {
 public:
  struct Hooks {
    // Ask the source for these pages; returns false when the urgent link is down (the pages
    // stay outstanding and are asked again by resendOutstanding()).
    std::function<bool(std::span<const std::uint64_t>)> request_pages;
    std::function<void(const Error&)> fatal;
    std::function<void()> progressed;  // pages became done
    // guest_memfd handshake only: answer a FaultRequest.
    std::function<void(const vmm::FaultReply&)> reply = {};
  };

  FaultService(transport::EventLoop& loop, const sys::Uffd& uffd, const GuestLayout& layout,
               store::PageMap& pages, PageInstaller& installer, MigrationStats& stats,
               metrics::AgentMetrics* metrics, log::Logger logger, Hooks hooks);
  ~FaultService();
  FaultService(const FaultService&) = delete;
  FaultService& operator=(const FaultService&) = delete;

  // Loop thread only, from here on.
  Status start();
  void stop();
  void onPageData(const transport::PageData& data);
  void onZeroRange(const transport::ZeroRange& zeros);
  // A vCPU exited on a page whose userfault bit is set (guest_memfd handshake). A request for
  // a page outside guest memory is an error returned to the caller; the service goes on.
  Status onFaultRequest(const vmm::FaultRequest& request);
  // Answers every waiting fault whose page another path (the bulk stream) has populated.
  void answerDone();
  // Any thread: whether faults wait (so that the bulk path knows answerDone() has work).
  bool anyWaiting() const { return waiting_.load(std::memory_order_relaxed) > 0; }
  // The urgent link is back: ask again for every page a vCPU still waits on.
  void resendOutstanding();
  // Reads and handles every queued uffd event.
  void drainEvents();
  std::size_t outstanding() const { return pending_.size(); }

 private:
  struct Pending {
    // When each fault waiting on the page was read: every waiting vCPU's stall is recorded,
    // not only the first one's.
    std::vector<std::chrono::steady_clock::time_point> faults;
    bool by_uffd = false;                     // a vCPU sleeps in a uffd fault on it
    std::vector<vmm::FaultRequest> requests;  // and these wait for a FaultReply
  };
  // A page the guest discarded, faulted on during a drain: zeros once the drain is over.
  struct RemovedFault {
    PageIndex page;
    std::chrono::steady_clock::time_point at;
  };
  static void onReadable(int fd, short what, void* arg);
  void handlePageFault(std::uint64_t address, std::vector<std::uint64_t>& to_request,
                       std::vector<RemovedFault>& to_zero);
  void handleRemove(std::uint64_t start, std::uint64_t end);
  void installReply(PageIndex first, std::uint64_t count, const std::byte* data);
  // One answered fault, in the migration's latency histogram and in the metrics: every fault
  // counted in demand_faults is recorded exactly once.
  void recordFault(metrics::FaultPath path, std::chrono::nanoseconds latency);
  // A page a fault waits on is populated: let the vCPUs go, reply, record the latency.
  void finishPending(PageIndex page, metrics::FaultPath path, bool zero);
  void makeVisibleOrFail(PageIndex page);
  void replyTo(const vmm::FaultRequest& request, PageIndex page, bool zero);
  Pending& addPending(PageIndex page, std::vector<std::uint64_t>& to_request);

  transport::EventLoop& loop_;
  const sys::Uffd& uffd_;
  const GuestLayout& layout_;
  store::PageMap& pages_;
  PageInstaller& installer_;
  MigrationStats& stats_;
  metrics::AgentMetrics* metrics_;
  log::Logger log_;
  Hooks hooks_;
  event* event_ = nullptr;
  bool draining_ = false;
  std::unordered_map<std::uint64_t, Pending> pending_;
  std::atomic<std::size_t> waiting_{0};  // pending_.size(), readable from any thread
};

}  // namespace lazymig::agent

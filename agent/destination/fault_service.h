// Serves the guest's page faults on the destination, top to bottom: reads the fault, asks the
// source on the urgent link it owns, decodes the reply and installs it (PageInstaller). It
// lives on the urgent loop thread, so that the whole round trip is one thread's work plus the
// network. Faults arrive by two routes with the same priority and latency metric: uffd events,
// and (guest_memfd handshake) the VMM's FaultRequests, each answered with a FaultReply once
// its page is populated. The counterpart of BulkReceiver, which owns the bulk link.
//
// Invariant 3: every fault read is answered (installed or woken) -- or the migration fails
// loudly. A fault is never answered with zeros to "recover", except on a page the guest
// itself discarded.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "agent/destination/destination_context.h"
#include "agent/destination/fault_phases.h"
#include "loop/libevent_ptr.h"
#include "transport/frame.h"
#include "vmm/handshake.h"

namespace lazymig::agent {

class FaultService {
 public:
  struct Hooks {
    std::function<void(const Error&)> fatal;
    std::function<void()> progressed;  // pages became done
    // The urgent link (re)opened; every page a vCPU waits on has been asked for again.
    std::function<void()> link_open = {};
    // The source recorded the migration completed (CompleteAck, docs/protocol.md).
    std::function<void()> acknowledged = {};
    // The urgent link is gone for good (give_up_after, or a refusal that will not change).
    std::function<void(const Error&)> gave_up = {};
    // guest_memfd handshake only: answer a FaultRequest.
    std::function<void(const vmm::FaultReply&)> reply = {};
  };

  FaultService(const DestinationContext& ctx, Hooks hooks);
  ~FaultService();
  FaultService(const FaultService&) = delete;
  FaultService& operator=(const FaultService&) = delete;

  // Every method below runs on the urgent loop (asserted), except anyWaiting().
  // Watches the uffd and connects the urgent link.
  Status start();
  // Stops watching the uffd; faults already read stay unanswered. The link stays up.
  void stopReadingFaults();
  // stopReadingFaults(), and closes the link.
  void stop();
  // The link to the source, for the ending handshake (Complete and the linger after it).
  SourceLink& link() { return *link_; }
  // A vCPU exited on a page whose userfault bit is set (guest_memfd handshake). A request for
  // a page outside guest memory is an error returned to the caller; the service goes on.
  Status onFaultRequest(const vmm::FaultRequest& request);
  // Answers every waiting fault whose page another path (the bulk stream) has populated.
  void answerDone();
  // Any thread: whether faults wait (so that the bulk path knows answerDone() has work).
  bool anyWaiting() const { return waiting_.load(std::memory_order_relaxed) > 0; }
  std::size_t outstanding() const { return pending_.size(); }

 private:
  struct Pending {
    // When each fault waiting on the page was read: every waiting vCPU's stall is recorded,
    // not only the first one's.
    std::vector<std::chrono::steady_clock::time_point> faults;
    bool by_uffd = false;  // a vCPU sleeps in a uffd fault on it
    // When its PageRequest last went to the link (unset while the link was down).
    std::optional<std::chrono::steady_clock::time_point> requested_at;
    std::vector<vmm::FaultRequest> requests;  // and these wait for a FaultReply
  };
  // A page the guest discarded, faulted on during a drain: zeros once the drain is over.
  struct RemovedFault {
    PageIndex page;
    std::chrono::steady_clock::time_point at;
  };
  static void onReadable(int fd, short what, void* arg);
  // Reads and handles every queued uffd event.
  void drainEvents();
  void handlePageFault(std::uint64_t address, std::vector<std::uint64_t>& to_request,
                       std::vector<RemovedFault>& to_zero);
  void handleRemove(std::uint64_t start, std::uint64_t end);
  // Asks the source for these pages (those pre-copy staged after its switch are installed from
  // the staging instead); false when the link is down (the pages stay pending and are asked
  // again when it is back).
  bool requestPages(std::span<const std::uint64_t> pages);
  // Pre-copy: installs a page the fault waits on from its staged copy, if it has one that the
  // source's switch made installable. True when it did (or failed the migration trying).
  bool serveFromStaging(PageIndex page);
  // The urgent link is back: ask again for every page a vCPU still waits on.
  void resendOutstanding();
  void onSourceFrame(const transport::FrameHeader& h, std::span<const std::byte> payload);
  // `read_at`: when the reply frame was taken off the link (the install phase starts there).
  void installReply(PageIndex first, std::uint64_t count, const std::byte* data,
                    std::chrono::steady_clock::time_point read_at);
  // One answered fault, in the migration's latency histogram and in the metrics: every fault
  // counted in demand_faults is recorded exactly once.
  void recordFault(metrics::FaultPath path, std::chrono::nanoseconds latency);
  // A page a fault waits on is populated: let the vCPUs go, reply, record the latency.
  // `reply_read_at`: a demand reply's arrival, which times the fault's phases.
  void finishPending(PageIndex page, metrics::FaultPath path, bool zero,
                     std::optional<std::chrono::steady_clock::time_point> reply_read_at = {});
  void makeVisibleOrFail(PageIndex page);
  void replyTo(const vmm::FaultRequest& request, PageIndex page, bool zero);
  Pending& addPending(PageIndex page, std::vector<std::uint64_t>& to_request);
  void assertOnLoop() const;

  const DestinationContext& ctx_;
  log::Logger log_;
  Hooks hooks_;
  loop::EventPtr uffd_event_;
  std::unique_ptr<SourceLink> link_;
  FaultPhaseTimer phase_timer_;
  bool draining_ = false;
  std::unordered_map<std::uint64_t, Pending> pending_;
  std::atomic<std::size_t> waiting_{0};  // pending_.size(), readable from any thread
};

}  // namespace lazymig::agent

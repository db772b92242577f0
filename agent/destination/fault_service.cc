#include "agent/destination/fault_service.h"

#include <event2/event.h>

#include <array>

namespace lazymig::agent {

using Clock = std::chrono::steady_clock;
using store::PageState;

FaultService::FaultService(transport::EventLoop& loop, const sys::Uffd& uffd,
                           const GuestLayout& layout, store::PageMap& pages,
                           PageInstaller& installer, MigrationStats& stats,
                           metrics::AgentMetrics* metrics, log::Logger logger, Hooks hooks)
    : loop_(loop),
      uffd_(uffd),
      layout_(layout),
      pages_(pages),
      installer_(installer),
      stats_(stats),
      metrics_(metrics),
      log_(std::move(logger)),
      hooks_(std::move(hooks)) {}

FaultService::~FaultService() { stop(); }

Status FaultService::start() {
  event_ = event_new(loop_.base(), uffd_.pollFd(), EV_READ | EV_PERSIST, &FaultService::onReadable,
                     this);
  if (event_ == nullptr) return fail(Errc::kSystem, "event_new", "uffd event");
  // Faults are the most urgent work on this loop: ahead of every connection's events.
  event_priority_set(event_, 0);
  if (event_add(event_, nullptr) != 0) return fail(Errc::kSystem, "event_add", "uffd event");
  return {};
}

void FaultService::stop() {
  if (event_ != nullptr) {
    event_free(event_);
    event_ = nullptr;
  }
}

void FaultService::onReadable(int, short, void* arg) {
  static_cast<FaultService*>(arg)->drainEvents();
}

void FaultService::drainEvents() {
  // An install retried after EAGAIN drains the uffd from inside a reply handler; the
  // events it reads are handled there, and the outer call sees an empty queue.
  if (draining_) return;
  draining_ = true;
  std::array<uffd_msg, 64> msgs;
  std::vector<std::uint64_t> to_request;
  std::vector<RemovedFault> to_zero;
  for (;;) {
    auto lock = installer_.eventsLock();
    auto n = uffd_.readEvents(msgs);
    if (!n) {
      draining_ = false;
      lock.unlock();
      hooks_.fatal(n.error());
      return;
    }
    if (*n == 0) break;
    for (std::size_t i = 0; i < *n; ++i) {
      const uffd_msg& m = msgs[i];
      switch (m.event) {
        case UFFD_EVENT_PAGEFAULT:
          handlePageFault(m.arg.pagefault.address, to_request, to_zero);
          break;
        case UFFD_EVENT_REMOVE:
          handleRemove(m.arg.remove.start, m.arg.remove.end);
          break;
        default:
          log_.warn("ignoring uffd event the handshake did not ask for",
                    {{"event", static_cast<int>(m.event)}});
      }
    }
  }
  draining_ = false;
  // Outside the drain: a zero install that meets EAGAIN (another remove queued) must be able
  // to read that event, which it cannot while this drain holds the events lock.
  for (const RemovedFault& f : to_zero) {
    auto r = installer_.installZeroForRemoved(f.page, [this] { drainEvents(); });
    if (!r) return hooks_.fatal(r.error());
    makeVisibleOrFail(f.page);
    recordFault(metrics::FaultPath::kLocal, Clock::now() - f.at);
  }
  if (!to_request.empty()) hooks_.request_pages(to_request);
}

void FaultService::handlePageFault(std::uint64_t address, std::vector<std::uint64_t>& to_request,
                                   std::vector<RemovedFault>& to_zero) {
  stats_.demand_faults.fetch_add(1, std::memory_order_relaxed);
  auto page = layout_.pageOf(HostAddr{address});
  if (!page) {
    hooks_.fatal(Error::make(Errc::kProtocol, "uffd page fault",
                             "address outside every region the VMM described"));
    return;
  }
  PageState state = pages_.state(*page);
  if (state == PageState::kInstalled) {
    // Installed between the fault and this read (the bulk stream's install woke it, or
    // will), or, on the write paths, populated but not yet mapped for the VMM: making it
    // visible again is harmless and guarantees no vCPU is left behind.
    makeVisibleOrFail(*page);
    recordFault(metrics::FaultPath::kLocal, std::chrono::nanoseconds(0));
    return;
  }
  if (state == PageState::kRemoved) {
    to_zero.push_back({*page, Clock::now()});
    return;
  }
  addPending(*page, to_request).by_uffd = true;
}

FaultService::Pending& FaultService::addPending(PageIndex page,
                                                std::vector<std::uint64_t>& to_request) {
  // Several vCPUs may fault on one page, by either route: one request to the source, and its
  // install answers them all.
  auto [it, fresh] = pending_.try_emplace(page.value);
  it->second.faults.push_back(Clock::now());
  if (fresh) {
    waiting_.store(pending_.size(), std::memory_order_relaxed);
    pages_.tryMarkRequested(page);
    to_request.push_back(page.value);
  }
  return it->second;
}

Status FaultService::onFaultRequest(const vmm::FaultRequest& request) {
  auto page = request.gpa ? layout_.pageOfGpa(*request.gpa) : layout_.pageOfOffset(request.offset);
  if (!page) {
    return fail(Errc::kInvalidArgument, "FaultRequest",
                request.gpa
                    ? "gpa " + std::to_string(*request.gpa) + " is in no region"
                    : "offset " + std::to_string(request.offset) + " is beyond guest memory");
  }
  stats_.demand_faults.fetch_add(1, std::memory_order_relaxed);
  if (pages_.isDone(*page)) {
    if (pages_.state(*page) == PageState::kRemoved) {
      auto r = installer_.installZeroForRemoved(*page, [this] { drainEvents(); });
      if (!r) {
        hooks_.fatal(r.error());
        return {};
      }
    }
    replyTo(request, *page, false);
    recordFault(metrics::FaultPath::kLocal, std::chrono::nanoseconds(0));
    return {};
  }
  std::vector<std::uint64_t> to_request;
  addPending(*page, to_request).requests.push_back(request);
  if (!to_request.empty()) hooks_.request_pages(to_request);
  return {};
}

void FaultService::replyTo(const vmm::FaultRequest& request, PageIndex page, bool zero) {
  if (!hooks_.reply) return;
  hooks_.reply(vmm::FaultReply{.vcpu = request.vcpu,
                               .offset = page.value * layout_.pageSize(),
                               .len = layout_.pageSize(),
                               .flags = request.flags,
                               .gpa = request.gpa,
                               .zero = zero});
}

void FaultService::handleRemove(std::uint64_t start, std::uint64_t end) {
  std::uint64_t n = installer_.removeRange(HostAddr{start}, HostAddr{end});
  stats_.removed_pages.fetch_add(n, std::memory_order_relaxed);
  if (metrics_ && n > 0) metrics_->addPagesRemaining(-static_cast<std::int64_t>(n));
  if (n > 0) hooks_.progressed();
}

void FaultService::onPageData(const transport::PageData& data) {
  installReply(PageIndex{data.first_page}, data.count, data.data.data());
}

void FaultService::onZeroRange(const transport::ZeroRange& zeros) {
  installReply(PageIndex{zeros.first_page}, zeros.count, nullptr);
}

void FaultService::installReply(PageIndex first, std::uint64_t count, const std::byte* data) {
  auto r = installer_.install(
      first, count, data, [this] { drainEvents(); }, /*fault_thread=*/true);
  if (!r) return hooks_.fatal(r.error());
  (data ? stats_.demand_pages : stats_.zero_pages)
      .fetch_add(r->installed, std::memory_order_relaxed);
  stats_.eexist_races.fetch_add(r->already_present, std::memory_order_relaxed);
  if (metrics_) {
    metrics_->addPages(data ? metrics::PagePath::kDemand : metrics::PagePath::kZero, r->installed);
    metrics_->addPagesRemaining(-static_cast<std::int64_t>(r->installed));
    if (r->already_present) metrics_->addUffdExists(r->already_present);
  }
  for (std::uint64_t p = first.value; p < first.value + count; ++p) {
    PageIndex page{p};
    if (pages_.state(page) == PageState::kRemoved) {
      // The guest discarded the page while its contents were on the way.
      auto z = installer_.installZeroForRemoved(page, [this] { drainEvents(); });
      if (!z) return hooks_.fatal(z.error());
    }
    if (pending_.count(p) != 0) {
      bool raced = r->installed == 0;
      finishPending(page, raced ? metrics::FaultPath::kRaced : metrics::FaultPath::kNetwork,
                    data == nullptr);
    }
  }
  if (r->installed > 0) hooks_.progressed();
}

void FaultService::finishPending(PageIndex page, metrics::FaultPath path, bool zero) {
  auto it = pending_.find(page.value);
  if (it == pending_.end()) return;
  Pending pending = std::move(it->second);
  pending_.erase(it);
  waiting_.store(pending_.size(), std::memory_order_relaxed);
  // uffd_copy and minor-mode installs wake the range themselves, but not when another path
  // installed the page first (the fault may have been read after that wake-up), and a
  // guest_memfd install only clears the bitmap bit: the uffd waiter needs its CONTINUE.
  if (pending.by_uffd &&
      (path != metrics::FaultPath::kNetwork || installer_.path() == PopulationPath::kGuestMemfd)) {
    makeVisibleOrFail(page);
  }
  for (const auto& request : pending.requests) replyTo(request, page, zero);
  const auto now = Clock::now();
  for (auto at : pending.faults) recordFault(path, now - at);
}

void FaultService::recordFault(metrics::FaultPath path, std::chrono::nanoseconds latency) {
  stats_.fault_latency.record(latency);
  if (metrics_) metrics_->observeFault(path, latency);
}

void FaultService::makeVisibleOrFail(PageIndex page) {
  auto s = installer_.makeVisible(page);
  if (!s) hooks_.fatal(s.error());
}

void FaultService::answerDone() {
  std::vector<std::uint64_t> done;
  for (const auto& [p, pending] : pending_) {
    if (pages_.isDone(PageIndex{p})) done.push_back(p);
  }
  for (auto p : done) {
    PageIndex page{p};
    if (pages_.state(page) == PageState::kRemoved) {
      auto z = installer_.installZeroForRemoved(page, [this] { drainEvents(); });
      if (!z) return hooks_.fatal(z.error());
    }
    finishPending(page, metrics::FaultPath::kRaced, false);
  }
}

void FaultService::resendOutstanding() {
  // Pages installed by the bulk stream while the urgent link was down are answered here.
  answerDone();
  std::vector<std::uint64_t> again;
  again.reserve(pending_.size());
  for (const auto& [p, pending] : pending_) again.push_back(p);
  for (std::size_t i = 0; i < again.size(); i += 512) {
    std::size_t n = std::min<std::size_t>(512, again.size() - i);
    hooks_.request_pages(std::span(again).subspan(i, n));
  }
}

}  // namespace lazymig::agent

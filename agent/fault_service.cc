#include "agent/fault_service.h"

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
          handlePageFault(m.arg.pagefault.address, to_request);
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
  if (!to_request.empty()) hooks_.request_pages(to_request);
}

void FaultService::handlePageFault(std::uint64_t address, std::vector<std::uint64_t>& to_request) {
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
    // will): waking again is harmless and guarantees no vCPU is left behind.
    wakeOrFail(*page);
    if (metrics_) metrics_->observeFault(metrics::FaultPath::kLocal, std::chrono::nanoseconds(0));
    return;
  }
  if (state == PageState::kRemoved) {
    auto r = installer_.installZeroForRemoved(*page, [this] { drainEvents(); });
    if (!r) return hooks_.fatal(r.error());
    wakeOrFail(*page);
    return;
  }
  // Several vCPUs may fault on one page: one request, and its install wakes them all.
  if (pending_.try_emplace(page->value, Pending{Clock::now()}).second) {
    pages_.tryMarkRequested(*page);
    to_request.push_back(page->value);
  }
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
    // A page installed by the bulk stream first (EEXIST or skipped) woke its vCPUs then;
    // wake again in case the fault was read after that install.
    if (pending_.count(p) != 0) {
      bool raced = r->installed == 0;
      if (raced) wakeOrFail(page);
      answered(page, raced ? metrics::FaultPath::kRaced : metrics::FaultPath::kNetwork);
    }
  }
  if (r->installed > 0) hooks_.progressed();
}

void FaultService::answered(PageIndex page, metrics::FaultPath path) {
  auto it = pending_.find(page.value);
  if (it == pending_.end()) return;
  auto latency = Clock::now() - it->second.first_fault;
  pending_.erase(it);
  stats_.fault_latency.record(latency);
  if (metrics_) metrics_->observeFault(path, latency);
}

void FaultService::wakeOrFail(PageIndex page) {
  auto s = installer_.wake(page);
  if (!s) hooks_.fatal(s.error());
}

void FaultService::resendOutstanding() {
  std::vector<std::uint64_t> again;
  for (auto it = pending_.begin(); it != pending_.end();) {
    PageIndex page{it->first};
    if (pages_.isDone(page)) {
      // Installed by the bulk stream while the urgent link was down.
      std::uint64_t p = it->first;
      ++it;
      if (pages_.state(page) == PageState::kRemoved) {
        auto z = installer_.installZeroForRemoved(page, [this] { drainEvents(); });
        if (!z) return hooks_.fatal(z.error());
      }
      wakeOrFail(page);
      answered(PageIndex{p}, metrics::FaultPath::kRaced);
      continue;
    }
    again.push_back(it->first);
    ++it;
  }
  for (std::size_t i = 0; i < again.size(); i += 512) {
    std::size_t n = std::min<std::size_t>(512, again.size() - i);
    hooks_.request_pages(std::span(again).subspan(i, n));
  }
}

}  // namespace lazymig::agent

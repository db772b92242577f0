#include "agent/destination/fault_service.h"

#include <event2/event.h>

#include <array>
#include <cassert>

namespace lazymig::agent {

using Clock = std::chrono::steady_clock;
using store::PageState;
using transport::FrameType;

FaultService::FaultService(const DestinationContext& ctx, Hooks hooks)
    : ctx_(ctx), log_(ctx.log), hooks_(std::move(hooks)), phase_timer_(ctx.recorder) {}

// The owner stops it on the loop first; the handles free what is left.
FaultService::~FaultService() = default;

void FaultService::assertOnLoop() const { assert(ctx_.urgent_loop.inLoopThread()); }

Status FaultService::start() {
  assertOnLoop();
  uffd_event_.reset(event_new(ctx_.urgent_loop.base(), ctx_.uffd.pollFd(), EV_READ | EV_PERSIST,
                              &FaultService::onReadable, this));
  if (!uffd_event_) return fail(Errc::kSystem, "event_new", "uffd event");
  // Faults are the most urgent work on this loop: ahead of every connection's events.
  event_priority_set(uffd_event_.get(), 0);
  if (event_add(uffd_event_.get(), nullptr) != 0) {
    return fail(Errc::kSystem, "event_add", "uffd event");
  }
  link_ = std::make_unique<SourceLink>(
      ctx_.urgent_loop, ctx_.tls, ctx_.linkParams(transport::ChannelKind::kUrgent),
      SourceLink::Handlers{
          .on_open =
              [this] {
                // Ask for the source's ServeTimes before any request on this link, so that
                // every reply on it is timed (a 1.1 source answers a Pong and no more).
                phase_timer_.linkOpened();
                link_->send(
                    transport::encodePing(FrameType::kPing, {transport::kServeTimesWanted}));
                resendOutstanding();
                if (hooks_.link_open) hooks_.link_open();
              },
          .on_frame = [this](const transport::FrameHeader& h,
                             std::span<const std::byte> p) { onSourceFrame(h, p); },
          .on_down = [this](const Error&) { ctx_.recorder.reconnect(metrics::Channel::kUrgent); },
          .on_give_up =
              [this](const Error& e) {
                if (hooks_.gave_up) hooks_.gave_up(e);
              }},
      log_);
  link_->start();
  return {};
}

void FaultService::stopReadingFaults() {
  assertOnLoop();
  uffd_event_.reset();
}

void FaultService::stop() {
  stopReadingFaults();
  if (link_) link_->stop();
}

void FaultService::onReadable(int, short, void* arg) {
  static_cast<FaultService*>(arg)->drainEvents();
}

void FaultService::drainEvents() {
  assertOnLoop();
  // An install retried after EAGAIN drains the uffd from inside a reply handler; the
  // events it reads are handled there, and the outer call sees an empty queue.
  if (draining_) return;
  draining_ = true;
  std::array<uffd_msg, 64> msgs;
  std::vector<std::uint64_t> to_request;
  std::vector<RemovedFault> to_zero;
  for (;;) {
    auto lock = ctx_.installer.eventsLock();
    auto n = ctx_.uffd.readEvents(msgs);
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
    auto r = ctx_.installer.installZeroForRemoved(f.page, [this] { drainEvents(); });
    if (!r) return hooks_.fatal(r.error());
    makeVisibleOrFail(f.page);
    recordFault(metrics::FaultPath::kLocal, Clock::now() - f.at);
  }
  if (!to_request.empty()) requestPages(to_request);
}

void FaultService::handlePageFault(std::uint64_t address, std::vector<std::uint64_t>& to_request,
                                   std::vector<RemovedFault>& to_zero) {
  ctx_.recorder.faultRead();
  auto page = ctx_.layout.pageOf(HostAddr{address});
  if (!page) {
    hooks_.fatal(Error::make(Errc::kProtocol, "uffd page fault",
                             "address outside every region the VMM described"));
    return;
  }
  PageState state = ctx_.pages.state(*page);
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
    ctx_.pages.tryMarkRequested(page);
    to_request.push_back(page.value);
  }
  return it->second;
}

Status FaultService::onFaultRequest(const vmm::FaultRequest& request) {
  assertOnLoop();
  auto page =
      request.gpa ? ctx_.layout.pageOfGpa(*request.gpa) : ctx_.layout.pageOfOffset(request.offset);
  if (!page) {
    return fail(Errc::kInvalidArgument, "FaultRequest",
                request.gpa
                    ? "gpa " + std::to_string(*request.gpa) + " is in no region"
                    : "offset " + std::to_string(request.offset) + " is beyond guest memory");
  }
  ctx_.recorder.faultRead();
  if (ctx_.pages.isDone(*page)) {
    if (ctx_.pages.state(*page) == PageState::kRemoved) {
      auto r = ctx_.installer.installZeroForRemoved(*page, [this] { drainEvents(); });
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
  if (!to_request.empty()) requestPages(to_request);
  return {};
}

void FaultService::replyTo(const vmm::FaultRequest& request, PageIndex page, bool zero) {
  if (!hooks_.reply) return;
  hooks_.reply(vmm::FaultReply{.vcpu = request.vcpu,
                               .offset = page.value * ctx_.layout.pageSize(),
                               .len = ctx_.layout.pageSize(),
                               .flags = request.flags,
                               .gpa = request.gpa,
                               .zero = zero});
}

void FaultService::handleRemove(std::uint64_t start, std::uint64_t end) {
  std::uint64_t n = ctx_.installer.removeRange(HostAddr{start}, HostAddr{end});
  ctx_.recorder.pagesRemoved(n);
  if (n > 0) hooks_.progressed();
}

bool FaultService::requestPages(std::span<const std::uint64_t> pages) {
  transport::PageRequest req;
  for (auto p : pages) {
    if (!serveFromStaging(PageIndex{p})) req.pages.push_back(p);
  }
  if (req.pages.empty()) return true;
  auto frame = transport::encodePageRequest(req);
  if (!link_ || !link_->send(frame)) return false;
  ctx_.recorder.wireBytes(metrics::Channel::kUrgent, metrics::Direction::kSent, frame.size());
  const auto sent = Clock::now();
  for (auto p : pages) {
    if (auto it = pending_.find(p); it != pending_.end()) it->second.requested_at = sent;
  }
  return true;
}

bool FaultService::serveFromStaging(PageIndex page) {
  if (!ctx_.staging) return false;
  auto copy = ctx_.staging->installable(page);
  if (!copy) return false;
  auto r = ctx_.installer.install(
      page, 1, copy->data, [this] { drainEvents(); }, /*fault_thread=*/true);
  if (!r) {
    hooks_.fatal(r.error());
    return true;
  }
  const bool zero = copy->data == nullptr;
  ctx_.recorder.pagesInstalled(zero ? metrics::PagePath::kZero : metrics::PagePath::kBulk,
                               r->installed, r->already_present);
  ctx_.recorder.precopyPages(metrics::PrecopyPages::kInstalledFromStaging, r->installed);
  ctx_.staging->countInstalled(r->installed);
  if (ctx_.pages.state(page) == PageState::kRemoved) {
    // The guest discarded the page meanwhile: zeros, never the staged contents.
    auto z = ctx_.installer.installZeroForRemoved(page, [this] { drainEvents(); });
    if (!z) {
      hooks_.fatal(z.error());
      return true;
    }
  }
  finishPending(page, metrics::FaultPath::kLocal, zero);
  if (r->installed > 0) hooks_.progressed();
  return true;
}

void FaultService::onSourceFrame(const transport::FrameHeader& h,
                                 std::span<const std::byte> payload) {
  assertOnLoop();
  const auto read_at = Clock::now();
  ctx_.recorder.wireBytes(metrics::Channel::kUrgent, metrics::Direction::kReceived,
                          payload.size() + transport::kHeaderSize);
  switch (h.type) {
    case FrameType::kPageData: {
      auto d = transport::decodePageData(payload, ctx_.wire());
      if (!d) return hooks_.fatal(d.error());
      return installReply(PageIndex{d->first_page}, d->count, d->data.data(), read_at);
    }
    case FrameType::kZeroRange: {
      auto z = transport::decodeZeroRange(payload, ctx_.wire());
      if (!z) return hooks_.fatal(z.error());
      return installReply(PageIndex{z->first_page}, z->count, nullptr, read_at);
    }
    case FrameType::kServeTimes: {
      // Timing only: a malformed one costs this fault its phases, never the migration.
      auto t = transport::decodeServeTimes(payload, ctx_.wire());
      if (!t) return log_.warn("ignoring a malformed ServeTimes", {{"error", t.error().message()}});
      return phase_timer_.serveTimes(*t, link_->tcpPath());
    }
    case FrameType::kCompleteAck: {
      if (auto ok = transport::decodeCompleteAck(payload); !ok) return hooks_.fatal(ok.error());
      if (hooks_.acknowledged) hooks_.acknowledged();
      return;
    }
    default:
      return hooks_.fatal(Error::make(
          Errc::kProtocol, "urgent link",
          std::string("unexpected frame ") + std::string(transport::frameTypeName(h.type))));
  }
}

void FaultService::installReply(PageIndex first, std::uint64_t count, const std::byte* data,
                                Clock::time_point read_at) {
  auto r = ctx_.installer.install(
      first, count, data, [this] { drainEvents(); }, /*fault_thread=*/true);
  if (!r) return hooks_.fatal(r.error());
  ctx_.recorder.pagesInstalled(data ? metrics::PagePath::kDemand : metrics::PagePath::kZero,
                               r->installed, r->already_present);
  for (std::uint64_t p = first.value; p < first.value + count; ++p) {
    PageIndex page{p};
    if (ctx_.pages.state(page) == PageState::kRemoved) {
      // The guest discarded the page while its contents were on the way.
      auto z = ctx_.installer.installZeroForRemoved(page, [this] { drainEvents(); });
      if (!z) return hooks_.fatal(z.error());
    }
    if (pending_.count(p) != 0) {
      bool raced = r->installed == 0;
      finishPending(page, raced ? metrics::FaultPath::kRaced : metrics::FaultPath::kNetwork,
                    data == nullptr, read_at);
    }
  }
  if (r->installed > 0) hooks_.progressed();
}

void FaultService::finishPending(PageIndex page, metrics::FaultPath path, bool zero,
                                 std::optional<Clock::time_point> reply_read_at) {
  auto it = pending_.find(page.value);
  if (it == pending_.end()) return;
  Pending pending = std::move(it->second);
  pending_.erase(it);
  waiting_.store(pending_.size(), std::memory_order_relaxed);
  // uffd_copy and minor-mode installs wake the range themselves, but not when another path
  // installed the page first (the fault may have been read after that wake-up), and a
  // guest_memfd install only clears the bitmap bit: the uffd waiter needs its CONTINUE.
  if (pending.by_uffd && (path != metrics::FaultPath::kNetwork ||
                          ctx_.installer.path() == PopulationPath::kGuestMemfd)) {
    makeVisibleOrFail(page);
  }
  for (const auto& request : pending.requests) replyTo(request, page, zero);
  const auto now = Clock::now();
  for (auto at : pending.faults) recordFault(path, now - at);
  // The phases of the fault that asked for the page (later faults on it joined its request).
  if (path == metrics::FaultPath::kNetwork && reply_read_at && pending.requested_at &&
      !pending.faults.empty()) {
    phase_timer_.replied(page,
                         {pending.faults.front(), *pending.requested_at, *reply_read_at, now});
  }
}

void FaultService::recordFault(metrics::FaultPath path, std::chrono::nanoseconds latency) {
  ctx_.recorder.faultServed(path, latency);
}

void FaultService::makeVisibleOrFail(PageIndex page) {
  auto s = ctx_.installer.makeVisible(page);
  if (!s) hooks_.fatal(s.error());
}

void FaultService::answerDone() {
  assertOnLoop();
  std::vector<std::uint64_t> done;
  for (const auto& [p, pending] : pending_) {
    if (ctx_.pages.isDone(PageIndex{p})) done.push_back(p);
  }
  for (auto p : done) {
    PageIndex page{p};
    if (ctx_.pages.state(page) == PageState::kRemoved) {
      auto z = ctx_.installer.installZeroForRemoved(page, [this] { drainEvents(); });
      if (!z) return hooks_.fatal(z.error());
    }
    finishPending(page, metrics::FaultPath::kRaced, false);
  }
}

void FaultService::resendOutstanding() {
  assertOnLoop();
  // Pages installed by the bulk stream while the urgent link was down are answered here.
  answerDone();
  std::vector<std::uint64_t> again;
  again.reserve(pending_.size());
  for (const auto& [p, pending] : pending_) again.push_back(p);
  for (std::size_t i = 0; i < again.size(); i += 512) {
    std::size_t n = std::min<std::size_t>(512, again.size() - i);
    requestPages(std::span(again).subspan(i, n));
  }
}

}  // namespace lazymig::agent

#include "agent/destination/bulk_receiver.h"

#include <cassert>
#include <chrono>
#include <thread>

namespace lazymig::agent {

using transport::FrameType;

namespace {

// A drain step installs at most this many staged pages (32 MiB of 4 KiB pages) before the loop
// reads the link again, in runs of at most kDrainRun pages per installer call.
constexpr std::uint64_t kDrainStepPages = 8192;
constexpr std::uint64_t kDrainRun = 1024;

// The page sizes a HelloOk may announce (as a Hello's), and a size in whole pages.
Status checkSourceLayout(std::uint32_t page_size, std::uint64_t memory_bytes) {
  if (page_size < 4096 || (page_size & (page_size - 1)) != 0 || memory_bytes == 0 ||
      memory_bytes % page_size != 0) {
    return fail(Errc::kProtocol, "HelloOk",
                "the source announced " + std::to_string(memory_bytes) + " bytes in pages of " +
                    std::to_string(page_size) +
                    " (a power of two >= 4096, and a whole number of pages, expected)");
  }
  return {};
}

}  // namespace

BulkReceiver::BulkReceiver(const DestinationContext& ctx, Hooks hooks, PrecopyStaging* staging)
    : loop_(ctx.bulk_loop),
      tls_(ctx.tls),
      params_(ctx.linkParams(transport::ChannelKind::kBulk)),
      recorder_(ctx.recorder),
      log_(ctx.log),
      hooks_(std::move(hooks)),
      ctx_(&ctx),
      staging_(staging) {}

BulkReceiver::BulkReceiver(LinkContext link, PrecopyStaging& staging, Hooks hooks)
    : loop_(link.bulk_loop),
      tls_(std::move(link.tls)),
      params_(std::move(link.link)),
      recorder_(link.recorder),
      log_(std::move(link.log)),
      hooks_(std::move(hooks)),
      staging_(&staging) {}

void BulkReceiver::assertOnLoop() const { assert(loop_.inLoopThread()); }

void BulkReceiver::start() {
  assertOnLoop();
  link_ = std::make_unique<SourceLink>(
      loop_, tls_, params_,
      SourceLink::Handlers{
          .on_open = [this] { onOpen(); },
          .on_frame = [this](const transport::FrameHeader& h,
                             std::span<const std::byte> p) { onFrame(h, p); },
          .on_down = [this](const Error&) { recorder_.reconnect(metrics::Channel::kBulk); },
          .on_give_up =
              [this](const Error& e) {
                if (hooks_.gave_up) hooks_.gave_up(e);
              }},
      log_);
  link_->start();
}

void BulkReceiver::stop() {
  assertOnLoop();
  drain_timer_.cancel();
  if (link_) link_->stop();
}

void BulkReceiver::finish(std::chrono::milliseconds linger) {
  assertOnLoop();
  drain_timer_.cancel();
  if (link_) link_->finish(linger);
}

void BulkReceiver::attach(const DestinationContext& ctx) {
  assertOnLoop();
  ctx_ = &ctx;
  // A Hello from now on says the guest's layout, and a source serving another is refused.
  if (link_) {
    link_->expectLayout(static_cast<std::uint32_t>(ctx.layout.pageSize()),
                        ctx.layout.totalBytes().value);
  }
  startDrainIfReady();
}

transport::Layout BulkReceiver::wire() const {
  if (ctx_) return ctx_->wire();
  return {static_cast<std::uint32_t>(staging_->pageSize()), staging_->pageCount()};
}

void BulkReceiver::onOpen() {
  if (staging_ && !staging_->sized()) {
    // The first HelloOk of a pre-copy destination: the guest's layout, as the source has it.
    const auto page_size = link_->sourcePageSize();
    const auto bytes = link_->sourceMemoryBytes();
    auto ok = checkSourceLayout(page_size, bytes);
    if (ok) ok = staging_->size(page_size, bytes / page_size);
    if (!ok) return hooks_.fatal(ok.error());
    log_.info("pre-copy: staging the source's pages until its switch",
              {{"page_size", page_size}, {"pages", bytes / page_size}});
  } else if (staging_ && !ctx_ &&
             (link_->sourcePageSize() != staging_->pageSize() ||
              link_->sourceMemoryBytes() != staging_->pageSize() * staging_->pageCount())) {
    return hooks_.fatal(Error::make(Errc::kProtocol, "HelloOk",
                                    "the source's layout changed across a reconnect: " +
                                        std::to_string(link_->sourceMemoryBytes()) + " bytes"));
  }
  sendResume();
}

void BulkReceiver::sendResume() {
  assertOnLoop();
  bulk_done_ = false;
  std::vector<std::uint64_t> bitmap;
  if (ctx_) {
    bitmap = ctx_->pages.doneBitmap();
  } else {
    bitmap.assign(Bitmap::wordsFor(staging_->pageCount()), 0);
  }
  // What is staged counts as had: the source's write tracking names any page written since it
  // was sent, and the StalePages frames drop it here.
  if (staging_ && staging_->sized()) staging_->addStagedTo(bitmap);
  // 8192 words (512 Ki pages, 2 GiB of 4 KiB pages) per frame keeps frames small.
  constexpr std::size_t kWordsPerFrame = 8192;
  for (std::size_t w = 0; w < bitmap.size(); w += kWordsPerFrame) {
    std::size_t n = std::min(kWordsPerFrame, bitmap.size() - w);
    transport::Resume r;
    r.first_page = w * 64;
    r.last = w + n == bitmap.size();
    r.words.assign(bitmap.begin() + static_cast<std::ptrdiff_t>(w),
                   bitmap.begin() + static_cast<std::ptrdiff_t>(w + n));
    if (!link_ || !link_->send(transport::encodeResume(r))) return;
  }
}

void BulkReceiver::onFrame(const transport::FrameHeader& h, std::span<const std::byte> payload) {
  assertOnLoop();
  recorder_.wireBytes(metrics::Channel::kBulk, metrics::Direction::kReceived,
                      payload.size() + transport::kHeaderSize);
  if (!ctx_ && !staging_->sized()) return;  // the HelloOk's layout was refused: failing
  switch (h.type) {
    case FrameType::kPageData: {
      auto d = transport::decodePageData(payload, wire());
      if (!d) return hooks_.fatal(d.error());
      return onPages(d->first_page, d->count, d->data.data());
    }
    case FrameType::kZeroRange: {
      auto z = transport::decodeZeroRange(payload, wire());
      if (!z) return hooks_.fatal(z.error());
      return onPages(z->first_page, z->count, nullptr);
    }
    case FrameType::kStalePages:
      return onStalePages(payload);
    case FrameType::kBulkDone:
      bulk_done_ = true;
      return resumeIfMissing();
    case FrameType::kPing:
      return;
    default:
      return hooks_.fatal(Error::make(
          Errc::kProtocol, "bulk channel",
          std::string("unexpected frame ") + std::string(transport::frameTypeName(h.type))));
  }
}

void BulkReceiver::onPages(std::uint64_t first, std::uint64_t count, const std::byte* data) {
  if (!stagesPages()) return install(first, count, data);
  staging_->stage(PageIndex{first}, count, data);
  recorder_.precopyPages(metrics::PrecopyPages::kStaged, count);
}

void BulkReceiver::onStalePages(std::span<const std::byte> payload) {
  auto stale = transport::decodeStalePages(payload, wire());
  if (!stale) return hooks_.fatal(stale.error());
  // Without pre-copy nothing was staged; after the switch nothing staged since is stale (the
  // source was paused): a stale set sent again on a new link changes nothing.
  if (!staging_ || staging_->switched()) return;
  const std::uint64_t dropped = staging_->dropStale(stale->first_page, stale->words);
  recorder_.precopyPages(metrics::PrecopyPages::kStaleDropped, dropped);
  if (!stale->last) return;
  staging_->markSwitched();
  recorder_.precopySwitch();
  log_.info("pre-copy: the source switched to post-copy",
            {{"staged_pages", staging_->stagedPages()},
             {"stale_dropped", staging_->staleDropped()},
             {"vmm", ctx_ != nullptr}});
  startDrainIfReady();
}

void BulkReceiver::startDrainIfReady() {
  if (!ctx_ || !staging_ || !staging_->switched() || draining_ || drained_) return;
  draining_ = true;
  drain_timer_ = loop_.schedule(std::chrono::milliseconds(0), [this] { drainStep(); });
}

void BulkReceiver::drainStep() {
  assertOnLoop();
  std::uint64_t budget = kDrainStepPages;
  while (budget > 0) {
    const auto run = staging_->nextRun(drain_cursor_, std::min(budget, kDrainRun));
    if (run.count == 0) {
      draining_ = false;
      drained_.store(true, std::memory_order_release);
      log_.info("pre-copy: every staged page went to the installer",
                {{"installed_from_staging", staging_->installedFromStaging()}});
      return resumeIfMissing();
    }
    auto r = ctx_->installer.install(
        PageIndex{run.first}, run.count, run.data,
        [] { std::this_thread::sleep_for(std::chrono::microseconds(50)); },
        /*fault_thread=*/false);
    if (!r) return hooks_.fatal(r.error());
    recorder_.pagesInstalled(run.data ? metrics::PagePath::kBulk : metrics::PagePath::kZero,
                             r->installed, r->already_present);
    staging_->countInstalled(r->installed);
    recorder_.precopyPages(metrics::PrecopyPages::kInstalledFromStaging, r->installed);
    if (r->installed > 0 || r->already_present > 0) hooks_.progressed();
    drain_cursor_ = run.first + run.count;
    budget -= run.count;
  }
  // Yield to the loop: the link's frames (and its stall check) wait for no more than a step.
  drain_timer_ = loop_.schedule(std::chrono::milliseconds(0), [this] { drainStep(); });
}

void BulkReceiver::resumeIfMissing() {
  if (!bulk_done_ || draining_) return;
  if (staging_ && !staging_->switched()) {
    // A source streams BulkDone only after its switch; asking again before the stale set
    // would only bring the same pages to stage.
    log_.warn("BulkDone before the source's stale set; waiting for it");
    return;
  }
  if (!ctx_) return;  // everything it sent is staged; the VMM's handshake installs it
  if (!ctx_->pages.complete()) {
    // Pages the source believed delivered (say, demand replies lost with a broken urgent
    // link) are still missing: ask again from the page map.
    log_.info("bulk stream ended with pages missing; resuming",
              {{"missing", ctx_->pages.pageCount() - ctx_->pages.doneCount()}});
    sendResume();
  }
}

void BulkReceiver::install(std::uint64_t first, std::uint64_t count, const std::byte* data) {
  // The bulk thread cannot drain the uffd itself; the fault thread reads the pending remove
  // event, and this retry follows it.
  auto r = ctx_->installer.install(
      PageIndex{first}, count, data,
      [] { std::this_thread::sleep_for(std::chrono::microseconds(50)); },
      /*fault_thread=*/false);
  if (!r) return hooks_.fatal(r.error());
  recorder_.pagesInstalled(data ? metrics::PagePath::kBulk : metrics::PagePath::kZero, r->installed,
                           r->already_present);
  if (r->installed > 0 || r->already_present > 0) hooks_.progressed();
}

}  // namespace lazymig::agent

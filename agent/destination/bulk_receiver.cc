#include "agent/destination/bulk_receiver.h"

#include <cassert>
#include <chrono>
#include <thread>

namespace lazymig::agent {

using transport::FrameType;

void BulkReceiver::assertOnLoop() const { assert(ctx_.bulk_loop.inLoopThread()); }

void BulkReceiver::start() {
  assertOnLoop();
  link_ = std::make_unique<SourceLink>(
      ctx_.bulk_loop, ctx_.tls, ctx_.linkParams(transport::ChannelKind::kBulk),
      SourceLink::Handlers{
          .on_open = [this] { sendResume(); },
          .on_frame = [this](const transport::FrameHeader& h,
                             std::span<const std::byte> p) { onFrame(h, p); },
          .on_down = [this](const Error&) { ctx_.recorder.reconnect(metrics::Channel::kBulk); },
          .on_give_up =
              [this](const Error& e) {
                if (hooks_.gave_up) hooks_.gave_up(e);
              }},
      log_);
  link_->start();
}

void BulkReceiver::stop() {
  assertOnLoop();
  if (link_) link_->stop();
}

void BulkReceiver::finish(std::chrono::milliseconds linger) {
  assertOnLoop();
  if (link_) link_->finish(linger);
}

void BulkReceiver::sendResume() {
  assertOnLoop();
  bulk_done_ = false;
  auto bitmap = ctx_.pages.doneBitmap();
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
  ctx_.recorder.wireBytes(metrics::Channel::kBulk, metrics::Direction::kReceived,
                          payload.size() + transport::kHeaderSize);
  switch (h.type) {
    case FrameType::kPageData: {
      auto d = transport::decodePageData(payload, ctx_.wire());
      if (!d) return hooks_.fatal(d.error());
      return install(d->first_page, d->count, d->data.data());
    }
    case FrameType::kZeroRange: {
      auto z = transport::decodeZeroRange(payload, ctx_.wire());
      if (!z) return hooks_.fatal(z.error());
      return install(z->first_page, z->count, nullptr);
    }
    case FrameType::kBulkDone:
      bulk_done_ = true;
      if (!ctx_.pages.complete()) {
        // Pages the source believed delivered (say, demand replies lost with a broken urgent
        // link) are still missing: ask again from the page map.
        log_.info("bulk stream ended with pages missing; resuming",
                  {{"missing", ctx_.pages.pageCount() - ctx_.pages.doneCount()}});
        sendResume();
      }
      return;
    case FrameType::kPing:
      return;
    default:
      return hooks_.fatal(Error::make(
          Errc::kProtocol, "bulk channel",
          std::string("unexpected frame ") + std::string(transport::frameTypeName(h.type))));
  }
}

void BulkReceiver::install(std::uint64_t first, std::uint64_t count, const std::byte* data) {
  // The bulk thread cannot drain the uffd itself; the fault thread reads the pending remove
  // event, and this retry follows it.
  auto r = ctx_.installer.install(
      PageIndex{first}, count, data,
      [] { std::this_thread::sleep_for(std::chrono::microseconds(50)); },
      /*fault_thread=*/false);
  if (!r) return hooks_.fatal(r.error());
  ctx_.recorder.pagesInstalled(data ? metrics::PagePath::kBulk : metrics::PagePath::kZero,
                               r->installed, r->already_present);
  if (r->installed > 0 || r->already_present > 0) hooks_.progressed();
}

}  // namespace lazymig::agent

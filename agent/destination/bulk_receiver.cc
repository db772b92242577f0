#include "agent/destination/bulk_receiver.h"

#include <chrono>
#include <thread>

namespace lazymig::agent {

using transport::FrameType;

void BulkReceiver::onOpen() {
  bulk_done_ = false;
  auto bitmap = pages_.doneBitmap();
  // 8192 words (512 Ki pages, 2 GiB of 4 KiB pages) per frame keeps frames small.
  constexpr std::size_t kWordsPerFrame = 8192;
  for (std::size_t w = 0; w < bitmap.size(); w += kWordsPerFrame) {
    std::size_t n = std::min(kWordsPerFrame, bitmap.size() - w);
    transport::Resume r;
    r.first_page = w * 64;
    r.last = w + n == bitmap.size();
    r.words.assign(bitmap.begin() + static_cast<std::ptrdiff_t>(w),
                   bitmap.begin() + static_cast<std::ptrdiff_t>(w + n));
    if (!hooks_.send(transport::encodeResume(r))) return;
  }
}

void BulkReceiver::onFrame(const transport::FrameHeader& h, std::span<const std::byte> payload) {
  stats_.bytes_received.fetch_add(payload.size() + transport::kHeaderSize,
                                  std::memory_order_relaxed);
  if (metrics_) {
    metrics_->addWireBytes(metrics::Channel::kBulk, metrics::Direction::kReceived,
                           payload.size() + transport::kHeaderSize);
  }
  switch (h.type) {
    case FrameType::kPageData: {
      auto d = transport::decodePageData(payload, layout_);
      if (!d) return hooks_.fatal(d.error());
      return install(d->first_page, d->count, d->data.data());
    }
    case FrameType::kZeroRange: {
      auto z = transport::decodeZeroRange(payload, layout_);
      if (!z) return hooks_.fatal(z.error());
      return install(z->first_page, z->count, nullptr);
    }
    case FrameType::kBulkDone:
      bulk_done_ = true;
      if (!pages_.complete()) {
        // Pages the source believed delivered (say, demand replies lost with a broken urgent
        // link) are still missing: ask again from the page map.
        log_.info("bulk stream ended with pages missing; resuming",
                  {{"missing", pages_.pageCount() - pages_.doneCount()}});
        onOpen();
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
  auto r = installer_.install(
      PageIndex{first}, count, data,
      [] { std::this_thread::sleep_for(std::chrono::microseconds(50)); },
      /*fault_thread=*/false);
  if (!r) return hooks_.fatal(r.error());
  (data ? stats_.bulk_pages : stats_.zero_pages).fetch_add(r->installed, std::memory_order_relaxed);
  stats_.eexist_races.fetch_add(r->already_present, std::memory_order_relaxed);
  if (metrics_) {
    metrics_->addPages(data ? metrics::PagePath::kBulk : metrics::PagePath::kZero, r->installed);
    metrics_->addPagesRemaining(-static_cast<std::int64_t>(r->installed));
    if (r->already_present) metrics_->addUffdExists(r->already_present);
  }
  if (r->installed > 0 || r->already_present > 0) hooks_.progressed();
}

}  // namespace lazymig::agent

#include "agent/source/bulk_sender.h"

#include <cassert>

#include "agent/source/page_frames.h"
#include "base/bitmap.h"

namespace lazymig::agent {

using transport::FrameType;

namespace {
constexpr auto kBulk = metrics::Channel::kBulk;
}  // namespace

void BulkSender::attach(std::unique_ptr<transport::Connection> conn,
                        std::shared_ptr<SourceMemory> memory, BulkSchedule& schedule) {
  assert(peer_loop_.inLoopThread());
  if (conn_) {
    log_.info("channel replaced by a new connection");
    conn_->close();
  }
  conn_ = std::move(conn);
  memory_ = std::move(memory);
  if (const auto bytes = packedRunBytes(batchPages(), memory_->pageSize());
      !buffers_ || buffers_->bufferBytes() != bytes) {
    buffers_ = std::make_shared<RunBuffers>(bytes);
  }
  schedule_ = &schedule;
  resumed_ = false;
  resume_bitmap_.assign(Bitmap::wordsFor(memory_->pageCount()), 0);
  conn_->setPriority(1);
  conn_->setLowWatermark(options_.window_bytes / 2);
  transport::Connection::Handlers handlers;
  handlers.on_frame = [this](const transport::FrameHeader& h, std::span<const std::byte> p) {
    onFrame(h, p);
  };
  handlers.on_drained = [this] { pump(); };
  handlers.on_closed = [this](const Error& e) {
    log_.warn("channel closed", {{"channel", "bulk"}, {"error", e.message()}});
    // Dropping the connection from its own close handler is allowed by the transport.
    conn_.reset();
  };
  conn_->setHandlers(std::move(handlers));
}

void BulkSender::close() {
  rate_timer_.cancel();
  precopy_timer_.cancel();
  if (conn_) conn_->close();
  conn_.reset();
}

void BulkSender::onFrame(const transport::FrameHeader& h, std::span<const std::byte> payload) {
  assert(peer_loop_.inLoopThread());
  recorder_.wireBytes(kBulk, metrics::Direction::kReceived,
                      payload.size() + transport::kHeaderSize);
  if (h.type == FrameType::kPing) {
    if (auto ping = transport::decodePing(payload)) {
      return sendFrame(*conn_, kBulk, transport::encodePing(FrameType::kPong, *ping), recorder_);
    }
  }
  if (h.type == FrameType::kResume) {
    const transport::Layout layout{static_cast<std::uint32_t>(memory_->pageSize()),
                                   memory_->pageCount()};
    if (auto r = transport::decodeResume(payload, layout)) {
      for (std::size_t i = 0; i < r->words.size(); ++i)
        resume_bitmap_[Bitmap::wordOf(r->first_page) + i] = r->words[i];
      if (r->last) {
        resumed_ = true;
        if (precopy_) {
          Bitmap has = Bitmap::fromWords(memory_->pageCount(), resume_bitmap_);
          if (!precopy_->switched()) {
            precopy_->resumed(has);
            log_.info("pre-copy (re)starting on the bulk channel");
            return pump();
          }
          return startPostCopy(precopy_->resumedAfterSwitch(has));
        }
        schedule_->reset(resume_bitmap_);
        done_sent_ = false;
        log_.info("bulk stream (re)starting", {{"pages_to_send", schedule_->remaining()}});
        pump();
      }
      return;
    }
  }
  log_.warn("bad frame on the bulk channel; closing it",
            {{"frame", transport::frameTypeName(h.type)}});
  recorder_.refusal("protocol");
  conn_->close();
  conn_.reset();
}

std::uint64_t BulkSender::batchPages() const {
  // batch_pages counts 4 KiB pages: a batch of huge pages is as many bytes, at least one page,
  // so that a frame stays under the transport's payload limit.
  return std::max<std::uint64_t>(1,
                                 std::uint64_t{options_.batch_pages} * 4096 / memory_->pageSize());
}

void BulkSender::pump() {
  assert(peer_loop_.inLoopThread());
  if (!conn_ || !resumed_ || finished_() || rate_timer_.pending()) return;
  const std::uint64_t batch_pages = batchPages();
  const double batch_bytes = static_cast<double>(batch_pages * memory_->pageSize());
  while (conn_->pendingOutputBytes() < options_.window_bytes) {
    if (auto wait = limiter_.limited()
                        ? limiter_.waitFor(batch_bytes, std::chrono::steady_clock::now())
                        : BulkRateLimiter::Clock::duration::zero();
        wait > wait.zero()) {
      rate_timer_ =
          peer_loop_.schedule(std::max(std::chrono::duration_cast<std::chrono::milliseconds>(wait),
                                       std::chrono::milliseconds(1)),
                              [this] { pump(); });
      return;
    }
    const bool precopy = precopy_ && !precopy_->switched();
    auto run = precopy ? nextPrecopyRun(batch_pages) : schedule_->next(batch_pages);
    if (!run && precopy) return;  // a timer pumps again when the next round may begin
    if (!run) {
      if (!done_sent_) {
        done_sent_ = true;
        sendFrame(*conn_, kBulk, transport::encodeBulkDone({stats_.served_bulk_pages.load()}),
                  recorder_);
        log_.info("bulk stream sent every page");
      }
      return;
    }
    limiter_.charge(
        static_cast<double>(sendPageRun(*conn_, kBulk, memory_, *run, recorder_, buffers_)));
  }
}

std::optional<PageRun> BulkSender::nextPrecopyRun(std::uint64_t max_pages) {
  const auto now = PrecopySource::Clock::now();
  auto next = precopy_->next(max_pages, now);
  if (next.run) return next.run;
  if (precopy_timer_.pending() || next.retry_at == PrecopySource::Clock::time_point::max()) {
    return std::nullopt;
  }
  const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next.retry_at - now);
  precopy_timer_ =
      peer_loop_.schedule(std::max(wait, std::chrono::milliseconds(0)), [this] { pump(); });
  return std::nullopt;
}

void BulkSender::switchToPostCopy() {
  assert(peer_loop_.inLoopThread());
  precopy_timer_.cancel();
  // Without a channel (or before its Resume) the next channel's Resume starts post-copy.
  if (conn_ && resumed_) startPostCopy(precopy_->currentNow());
}

void BulkSender::startPostCopy(const Bitmap& current) {
  const Bitmap& stale = precopy_->stale();
  // Always at least one chunk, the last one with `last`: the destination installs no
  // pre-copied page before it. Every channel gets it again (the last one may not have
  // delivered it); dropping a dropped page changes nothing.
  constexpr std::uint64_t kWordsPerChunk = 4096;
  const auto words = stale.words();
  std::uint64_t w = 0;
  do {
    const std::uint64_t n = std::min<std::uint64_t>(kWordsPerChunk, words.size() - w);
    transport::StalePages chunk{w * Bitmap::kBitsPerWord,
                                w + n >= words.size(),
                                {words.begin() + w, words.begin() + w + n}};
    sendFrame(*conn_, kBulk, transport::encodeStalePages(chunk), recorder_);
    w += n;
  } while (w < words.size());
  schedule_->reset(current.words());
  schedule_->putFirst(precopy_->hotSet());
  done_sent_ = false;
  log_.info("pre-copy switched: post-copy starting",
            {{"stale_pages", stale.count()}, {"pages_to_send", schedule_->remaining()}});
  pump();
}

}  // namespace lazymig::agent

// The source's bulk stream to one destination: waits for the destination's Resume (which
// pages it has), then sends everything else in BulkSchedule's order, at most a window of
// bytes queued on the connection and at most the configured rate, and ends with BulkDone.
// A reconnect replaces the channel and starts again from the new Resume.
//
// On a live source with pre-copy (usePrecopy), the stream first sends PrecopySource's rounds
// while the source VM runs; at the switch (switchToPostCopy, and again after the Resume of
// every later channel) it sends the stale set as StalePages, then post-copy as above with the
// hot set first.
//
// Every method runs on the peer loop (asserted in debug builds), but close() (see there).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "agent/core/migration_stats.h"
#include "agent/core/transfer_recorder.h"
#include "agent/source/bulk_rate_limiter.h"
#include "agent/source/bulk_schedule.h"
#include "agent/source/page_frames.h"
#include "agent/source/precopy_source.h"
#include "agent/source/source_memory.h"
#include "base/log.h"
#include "transport/connection.h"

namespace lazymig::agent {

class BulkSender {
 public:
  struct Options {
    std::size_t window_bytes = 4 << 20;  // queued on the connection at most
    std::uint32_t batch_pages = 64;      // in 4 KiB pages, whatever the page size
    double rate_bytes_s = 0;             // 0: unlimited
  };
  // `finished`: the migration reached a final state, nothing more is sent.
  BulkSender(transport::EventLoop& peer_loop, Options options, TransferRecorder recorder,
             const MigrationStats& stats, std::function<bool()> finished, log::Logger log)
      : peer_loop_(peer_loop),
        options_(options),
        limiter_(options.rate_bytes_s),
        recorder_(recorder),
        stats_(stats),
        finished_(std::move(finished)),
        log_(std::move(log)) {}

  // Peer loop: the destination's bulk channel, HelloOk sent. Replaces a previous one this side
  // has not noticed is dead yet.
  void attach(std::unique_ptr<transport::Connection> conn, std::shared_ptr<SourceMemory> memory,
              BulkSchedule& schedule);
  // Peer loop: pre-copy's rounds go first on every channel until its switch.
  void usePrecopy(PrecopySource* precopy) { precopy_ = precopy; }
  // Peer loop: the pre-copy switched (PrecopySource::pause): the stale set, then post-copy.
  void switchToPostCopy();
  // Closes the channel (flushing what is queued) and stops sending. Peer loop, or any thread
  // once the peer loop has stopped (the agent's shutdown).
  void close();

 private:
  void onFrame(const transport::FrameHeader& h, std::span<const std::byte> payload);
  void pump();
  std::uint64_t batchPages() const;  // in pages of the memory's size
  std::optional<PageRun> nextPrecopyRun(std::uint64_t max_pages);
  // After the switch, on a channel whose destination holds `current`: StalePages, post-copy.
  void startPostCopy(const Bitmap& current);

  transport::EventLoop& peer_loop_;
  const Options options_;
  BulkRateLimiter limiter_;
  TransferRecorder recorder_;
  const MigrationStats& stats_;
  std::function<bool()> finished_;
  log::Logger log_;

  std::unique_ptr<transport::Connection> conn_;
  std::shared_ptr<SourceMemory> memory_;
  std::shared_ptr<RunBuffers> buffers_;  // what batches are packed into (page_frames.h)
  BulkSchedule* schedule_ = nullptr;
  std::vector<std::uint64_t> resume_bitmap_;  // the Resume frames received so far
  bool resumed_ = false;
  bool done_sent_ = false;
  transport::Timer rate_timer_;
  PrecopySource* precopy_ = nullptr;
  transport::Timer precopy_timer_;  // the next pre-copy round, while the rounds wait
};

}  // namespace lazymig::agent

// How a source puts a run of guest pages on the wire, on either channel: zero pages as one
// ZeroRange marker per run of them, the others as PageData frames. Accounts what it sent
// (pages served by path, wire bytes) through the migration's recorder.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "agent/core/transfer_recorder.h"
#include "agent/source/bulk_schedule.h"
#include "agent/source/source_memory.h"
#include "transport/connection.h"

namespace lazymig::agent {

// The buffers a bulk run's frames are packed into, one buffer per run: the connection holds
// it until it has encrypted it, then it comes back here for a later run, so that packing costs
// no allocation and no page faults on fresh memory. A buffer may be released on another thread
// (a connection freed at shutdown), hence the lock.
class RunBuffers : public std::enable_shared_from_this<RunBuffers> {
 public:
  explicit RunBuffers(std::size_t buffer_bytes) : buffer_bytes_(buffer_bytes) {}
  std::size_t bufferBytes() const { return buffer_bytes_; }
  // A buffer of at least `bytes`; pooled when `bytes` is at most bufferBytes().
  std::shared_ptr<std::byte> take(std::size_t bytes);

 private:
  void give(std::byte* buffer);

  const std::size_t buffer_bytes_;
  std::mutex mu_;
  std::vector<std::unique_ptr<std::byte[]>> free_;
};

// The bytes a run of `pages` pages of `page_size` takes on the wire at most, frames included.
std::size_t packedRunBytes(std::uint64_t pages, std::uint64_t page_size);

// Runs on `conn`'s loop. Urgent replies go out as one buffer per frame (one TLS record: a
// vCPU waits on it). Bulk runs of several frames, with `buffers`, are packed whole into one
// buffer (frames and page bytes, copied from the memory), so that the TLS layer cuts full
// 16 KiB records from it instead of one small record per frame header and per zero range (a
// run of random pages had about 40 records instead of 16); a run that is one frame is sent as
// before, its bytes referenced, not copied. Without `buffers`, bulk frames reference the mapping
// (`memory` keeps it alive while they are queued). Returns the bytes queued on the wire.
std::uint64_t sendPageRun(transport::Connection& conn, metrics::Channel channel,
                          const std::shared_ptr<SourceMemory>& memory, PageRun run,
                          const TransferRecorder& recorder,
                          const std::shared_ptr<RunBuffers>& buffers = nullptr);

// A frame other than page data (Pong, BulkDone, CompleteAck, Error...), counted on `channel`.
void sendFrame(transport::Connection& conn, metrics::Channel channel, std::string_view frame,
               const TransferRecorder& recorder);

}  // namespace lazymig::agent

#include "agent/source/page_frames.h"

#include <algorithm>
#include <cstring>

namespace lazymig::agent {

namespace {

// Buffers kept for reuse at most: a 4 MiB window of 256 KiB runs, and some slack.
constexpr std::size_t kKeptBuffers = 32;
constexpr std::size_t kZeroRangeFrameBytes = transport::kHeaderSize + 16;

// Puts one run's frames on the connection, one frame at a time (urgent; bulk without
// buffers) or packed into one buffer sent whole (bulk with buffers).
class FrameWriter {
 public:
  FrameWriter(transport::Connection& conn, metrics::Channel channel,
              const std::shared_ptr<SourceMemory>& memory, const TransferRecorder& recorder)
      : conn_(conn),
        urgent_(channel == metrics::Channel::kUrgent),
        channel_(channel),
        memory_(memory),
        page_size_(memory->pageSize()),
        recorder_(recorder) {}

  void pack(std::shared_ptr<std::byte> buffer) { packed_ = std::move(buffer); }

  void zeros(std::uint64_t first, std::uint64_t count) {
    auto frame = transport::encodeZeroRange({first, count});
    if (packed_) {
      append(frame.data(), frame.size());
    } else {
      conn_.sendEncoded(frame);
    }
    wire_ += frame.size();
    recorder_.pagesServed(metrics::PagePath::kZero, count);
  }

  void data(std::uint64_t first, std::uint64_t count) {
    auto prefix = transport::encodePageDataPrefix(first, static_cast<std::uint32_t>(count),
                                                  static_cast<std::uint32_t>(page_size_));
    auto body = memory_->pages(first, count);
    if (packed_) {
      append(prefix.data(), prefix.size());
      append(body.data(), body.size());
    } else if (urgent_) {
      // One buffer, so one TLS record: a vCPU waits on this reply, and a record split in
      // two costs the destination a second wake-up and read before it can install.
      std::string frame(reinterpret_cast<const char*>(prefix.data()), prefix.size());
      frame.append(reinterpret_cast<const char*>(body.data()), body.size());
      conn_.sendEncoded(frame);
    } else {
      conn_.sendWithBody(prefix, body, memory_);
    }
    wire_ += prefix.size() + count * page_size_;
    recorder_.pagesServed(urgent_ ? metrics::PagePath::kDemand : metrics::PagePath::kBulk, count);
  }

  std::uint64_t finish() {
    if (packed_ && packed_bytes_ > 0) {
      conn_.sendWithBody({}, std::span<const std::byte>(packed_.get(), packed_bytes_), packed_);
    }
    recorder_.wireBytes(channel_, metrics::Direction::kSent, wire_);
    return wire_;
  }

 private:
  void append(const void* bytes, std::size_t n) {
    std::memcpy(packed_.get() + packed_bytes_, bytes, n);
    packed_bytes_ += n;
  }

  transport::Connection& conn_;
  const bool urgent_;
  const metrics::Channel channel_;
  const std::shared_ptr<SourceMemory>& memory_;
  const std::uint64_t page_size_;
  const TransferRecorder& recorder_;
  std::shared_ptr<std::byte> packed_;
  std::size_t packed_bytes_ = 0;
  std::uint64_t wire_ = 0;
};

}  // namespace

std::size_t packedRunBytes(std::uint64_t pages, std::uint64_t page_size) {
  // Zero and data runs alternate: at most one frame per page, each at most the larger header.
  return pages * (page_size + std::max(transport::kPageDataPrefixSize, kZeroRangeFrameBytes));
}

std::shared_ptr<std::byte> RunBuffers::take(std::size_t bytes) {
  if (bytes > buffer_bytes_) {
    return std::shared_ptr<std::byte>(new std::byte[bytes], std::default_delete<std::byte[]>());
  }
  std::unique_ptr<std::byte[]> buffer;
  {
    std::lock_guard lock(mu_);
    if (!free_.empty()) {
      buffer = std::move(free_.back());
      free_.pop_back();
    }
  }
  if (!buffer) buffer = std::make_unique_for_overwrite<std::byte[]>(buffer_bytes_);
  return std::shared_ptr<std::byte>(buffer.release(), [pool = weak_from_this()](std::byte* b) {
    if (auto p = pool.lock()) return p->give(b);
    delete[] b;
  });
}

void RunBuffers::give(std::byte* buffer) {
  std::unique_ptr<std::byte[]> owned(buffer);
  std::lock_guard lock(mu_);
  if (free_.size() < kKeptBuffers) free_.push_back(std::move(owned));
}

std::uint64_t sendPageRun(transport::Connection& conn, metrics::Channel channel,
                          const std::shared_ptr<SourceMemory>& memory, PageRun run,
                          const TransferRecorder& recorder,
                          const std::shared_ptr<RunBuffers>& buffers) {
  // The run split into zero and data spans first: one span is one frame, sent as before (a
  // data frame's bytes referenced, not copied); only a run of several frames is packed.
  struct Span {
    std::uint64_t first, count;
    bool zero;
  };
  std::vector<Span> spans;
  const std::uint64_t end = run.first + run.count;
  if (run.count > 1 && memory->prefaultHelps()) memory->prefault(run.first, run.count);
  for (std::uint64_t p = run.first; p < end;) {
    const bool zero = memory->isZero(p);
    std::uint64_t q = p + 1;
    while (q < end && memory->isZero(q) == zero) ++q;
    spans.push_back({p, q - p, zero});
    p = q;
  }
  FrameWriter out(conn, channel, memory, recorder);
  if (buffers && channel == metrics::Channel::kBulk && spans.size() > 1) {
    out.pack(buffers->take(packedRunBytes(run.count, memory->pageSize())));
  }
  for (const Span& span : spans) {
    if (span.zero) {
      out.zeros(span.first, span.count);
    } else {
      out.data(span.first, span.count);
    }
  }
  return out.finish();
}

void sendFrame(transport::Connection& conn, metrics::Channel channel, std::string_view frame,
               const TransferRecorder& recorder) {
  conn.sendEncoded(frame);
  recorder.wireBytes(channel, metrics::Direction::kSent, frame.size());
}

}  // namespace lazymig::agent

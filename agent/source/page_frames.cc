#include "agent/source/page_frames.h"

namespace lazymig::agent {

std::uint64_t sendPageRun(transport::Connection& conn, metrics::Channel channel,
                          const std::shared_ptr<SourceMemory>& memory, PageRun run,
                          const TransferRecorder& recorder) {
  const auto page_size = static_cast<std::uint32_t>(memory->pageSize());
  const bool urgent = channel == metrics::Channel::kUrgent;
  const std::uint64_t end = run.first + run.count;
  std::uint64_t wire = 0;
  if (run.count > 1 && memory->prefaultHelps()) memory->prefault(run.first, run.count);
  for (std::uint64_t p = run.first; p < end;) {
    const bool zero = memory->isZero(p);
    std::uint64_t q = p + 1;
    while (q < end && memory->isZero(q) == zero) ++q;
    if (zero) {
      auto frame = transport::encodeZeroRange({p, q - p});
      conn.sendEncoded(frame);
      wire += frame.size();
      recorder.pagesServed(metrics::PagePath::kZero, q - p);
    } else {
      auto prefix =
          transport::encodePageDataPrefix(p, static_cast<std::uint32_t>(q - p), page_size);
      auto body = memory->pages(p, q - p);
      if (urgent) {
        // One buffer, so one TLS record: a vCPU waits on this reply, and a record split in
        // two costs the destination a second wake-up and read before it can install.
        std::string frame(reinterpret_cast<const char*>(prefix.data()), prefix.size());
        frame.append(reinterpret_cast<const char*>(body.data()), body.size());
        conn.sendEncoded(frame);
      } else {
        conn.sendWithBody(prefix, body, memory);
      }
      wire += prefix.size() + (q - p) * page_size;
      recorder.pagesServed(urgent ? metrics::PagePath::kDemand : metrics::PagePath::kBulk, q - p);
    }
    p = q;
  }
  recorder.wireBytes(channel, metrics::Direction::kSent, wire);
  return wire;
}

void sendFrame(transport::Connection& conn, metrics::Channel channel, std::string_view frame,
               const TransferRecorder& recorder) {
  conn.sendEncoded(frame);
  recorder.wireBytes(channel, metrics::Direction::kSent, frame.size());
}

}  // namespace lazymig::agent

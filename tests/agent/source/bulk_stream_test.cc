// The bulk stream's bytes as a destination receives them over real TLS: each run's frames are
// packed into one buffer (agent/source/page_frames.h), and what arrives must be exactly the
// pages the destination did not hold, each once, zero pages as ZeroRange, the others with the
// snapshot's bytes.
#include <map>

#include "tests/agent/source/source_peer.h"

namespace lazymig::agent {
namespace {

using transport::ChannelKind;
using transport::FrameType;
using Frame = source_test::TestDestination::Frame;

class BulkStreamTest : public source_test::SourcePeer {};

TEST_F(BulkStreamTest, SendsEveryPageNotHeldOnceWithTheSnapshotsBytes) {
  createMigration();
  listen();
  auto bulk = dial();
  ASSERT_TRUE(bulk->connected());
  bulk->send(transport::encodeHello(bulk->hello(ChannelKind::kBulk, kBytes)));
  ASSERT_TRUE(bulk->waitFor(FrameType::kHelloOk));
  // The destination holds pages 1, 4, 8, 70 and 128..191: runs around them split, and
  // [0], [2, 3] and [5, 7] are runs of one frame (zero, data, data), sent unpacked.
  std::vector<std::uint64_t> held(kPages / 64, 0);
  held[0] = 1ull << 1 | 1ull << 4 | 1ull << 8;
  held[1] = 1ull << 6;
  held[2] = ~0ull;
  bulk->send(transport::encodeResume({0, true, held}));
  ASSERT_TRUE(bulk->waitFor(FrameType::kBulkDone));

  std::vector<Frame> frames;
  bulk->waitUntil([&](const std::vector<Frame>& f) { return frames = f, true; });
  const transport::Layout layout{4096, kPages};
  std::map<std::uint64_t, int> sent;  // page -> times sent
  for (const auto& f : frames) {
    if (f.type == FrameType::kZeroRange) {
      auto z = transport::decodeZeroRange(f.payload, layout);
      ASSERT_TRUE(z);
      for (std::uint64_t p = z->first_page; p < z->first_page + z->count; ++p) {
        ++sent[p];
        EXPECT_EQ(p % 4, 0u) << "page " << p << " is not zero in the snapshot";
      }
    } else if (f.type == FrameType::kPageData) {
      auto d = transport::decodePageData(f.payload, layout);
      ASSERT_TRUE(d);
      for (std::uint64_t i = 0; i < d->count; ++i) {
        const std::uint64_t p = d->first_page + i;
        ++sent[p];
        std::vector<std::uint64_t> want(4096 / 8, p % 4 == 0 ? 0 : p);
        EXPECT_EQ(std::memcmp(d->data.data() + i * 4096, want.data(), 4096), 0) << "page " << p;
      }
    }
  }
  for (std::uint64_t p = 0; p < kPages; ++p) {
    const bool was_held = (held[p / 64] >> (p % 64)) & 1;
    EXPECT_EQ(sent[p], was_held ? 0 : 1) << "page " << p;
  }
}

}  // namespace
}  // namespace lazymig::agent

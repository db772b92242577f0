#include "transport/frame.h"

#include <gtest/gtest.h>

#include <cstring>

namespace lazymig::transport {
namespace {

std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
std::span<const std::byte> payloadOf(const std::string& frame) {
  return bytes(frame).subspan(kHeaderSize);
}

const Layout kLayout{4096, 1000};

template <class T>
std::string errorOf(const Result<T>& r) {
  EXPECT_FALSE(r);
  return r ? "" : r.error().message();
}

TEST(Frame, HeaderRoundTripAndLimits) {
  std::string f = encodeBulkDone({7});
  auto h = decodeHeader(bytes(f).first<kHeaderSize>(), Limits{});
  ASSERT_TRUE(h) << h.error().message();
  EXPECT_EQ(h->type, FrameType::kBulkDone);
  EXPECT_EQ(h->length, 8u);

  std::string bad = f;
  bad[0] = 'X';
  EXPECT_NE(errorOf(decodeHeader(bytes(bad).first<kHeaderSize>(), Limits{})).find("magic"),
            std::string::npos);
  bad = f;
  bad[4] = 9;
  EXPECT_NE(errorOf(decodeHeader(bytes(bad).first<kHeaderSize>(), Limits{})).find("version 9"),
            std::string::npos);
  bad = f;
  bad[5] = 99;
  EXPECT_NE(errorOf(decodeHeader(bytes(bad).first<kHeaderSize>(), Limits{}))
                .find("unknown frame type 99"),
            std::string::npos);
  bad = f;
  bad[6] = 1;
  EXPECT_NE(errorOf(decodeHeader(bytes(bad).first<kHeaderSize>(), Limits{})).find("flags"),
            std::string::npos);
  // An oversized length is refused from the header alone, before any payload is buffered.
  std::array<std::byte, kHeaderSize> big;
  encodeHeader(FrameType::kPageData, 0xfffffff0u, big);
  auto e = errorOf(decodeHeader(big, Limits{}));
  EXPECT_NE(e.find("PageData"), std::string::npos);
  EXPECT_NE(e.find("exceeds the limit"), std::string::npos);
}

TEST(Frame, HelloRoundTripAndValidation) {
  Hello h{"vm-1", std::string(32, 'a'), ChannelKind::kBulk, 4096, 1 << 20};
  auto d = decodeHello(payloadOf(encodeHello(h)));
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(d->migration_id, "vm-1");
  EXPECT_EQ(d->channel, ChannelKind::kBulk);
  EXPECT_EQ(d->memory_bytes, 1u << 20);
  h.migration_id = "../x";
  EXPECT_NE(errorOf(decodeHello(payloadOf(encodeHello(h)))).find("migration_id"),
            std::string::npos);
  h.migration_id = "vm";
  h.token = "short";
  EXPECT_NE(errorOf(decodeHello(payloadOf(encodeHello(h)))).find("token"), std::string::npos);
  h.token = std::string(32, 'a');
  h.page_size = 3000;
  EXPECT_NE(errorOf(decodeHello(payloadOf(encodeHello(h)))).find("page_size"), std::string::npos);
  // Issue 19: "layout not known yet" is a bulk Hello's page_size 0 with memory_bytes 0 only.
  h.page_size = 0;
  h.memory_bytes = 0;
  h.channel = ChannelKind::kBulk;
  auto unknown = decodeHello(payloadOf(encodeHello(h)));
  ASSERT_TRUE(unknown) << unknown.error().message();
  EXPECT_TRUE(unknown->layoutUnknown());
  h.channel = ChannelKind::kUrgent;
  EXPECT_NE(errorOf(decodeHello(payloadOf(encodeHello(h)))).find("page_size"), std::string::npos);
  h.channel = ChannelKind::kBulk;
  h.memory_bytes = 1 << 20;
  EXPECT_NE(errorOf(decodeHello(payloadOf(encodeHello(h)))).find("page_size"), std::string::npos);
  h.page_size = 3000;
  std::string truncated = encodeHello(h).substr(0, kHeaderSize + 5);
  EXPECT_NE(errorOf(decodeHello(payloadOf(truncated))).find("Hello"), std::string::npos);
}

TEST(Frame, PageRequestBoundsEveryIndex) {
  auto ok = decodePageRequest(payloadOf(encodePageRequest({{0, 999}})), kLayout, Limits{});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->pages, (std::vector<std::uint64_t>{0, 999}));
  auto e = errorOf(decodePageRequest(payloadOf(encodePageRequest({{5, 1000}})), kLayout, Limits{}));
  EXPECT_NE(e.find("PageRequest: page 1000 out of range"), std::string::npos) << e;
  EXPECT_NE(errorOf(decodePageRequest(payloadOf(encodePageRequest({{}})), kLayout, Limits{}))
                .find("count 0"),
            std::string::npos);
  PageRequest many;
  many.pages.assign(2000, 1);
  EXPECT_NE(errorOf(decodePageRequest(payloadOf(encodePageRequest(many)), kLayout, Limits{}))
                .find("count 2000"),
            std::string::npos);
  std::string f = encodePageRequest({{1, 2}});
  EXPECT_NE(errorOf(decodePageRequest(payloadOf(f.substr(0, f.size() - 3)), kLayout, Limits{}))
                .find("payload holds"),
            std::string::npos);
}

TEST(Frame, PageDataViewsThePayloadAndChecksLength) {
  std::vector<std::byte> pages(2 * 4096, std::byte{0x5a});
  auto prefix = encodePageDataPrefix(10, 2, 4096);
  std::string f(reinterpret_cast<const char*>(prefix.data()), prefix.size());
  f.append(reinterpret_cast<const char*>(pages.data()), pages.size());
  auto h = decodeHeader(bytes(f).first<kHeaderSize>(), Limits{});
  ASSERT_TRUE(h);
  EXPECT_EQ(h->length, f.size() - kHeaderSize);
  auto d = decodePageData(payloadOf(f), kLayout);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(d->first_page, 10u);
  EXPECT_EQ(d->count, 2u);
  EXPECT_EQ(d->data.size(), pages.size());
  EXPECT_EQ(d->data[4096], std::byte{0x5a});
  EXPECT_NE(errorOf(decodePageData(payloadOf(f.substr(0, f.size() - 1)), kLayout)).find("data is"),
            std::string::npos);
  auto far = encodePageDataPrefix(999, 2, 4096);
  std::string g(reinterpret_cast<const char*>(far.data()), far.size());
  g.append(2 * 4096, 'x');
  EXPECT_NE(errorOf(decodePageData(payloadOf(g), kLayout)).find("out of range"), std::string::npos);
}

TEST(Frame, RangesNeverWrapAround) {
  // first_page near 2^64 with a count that wraps must not pass a naive first+count check.
  auto e =
      errorOf(decodeZeroRange(payloadOf(encodeZeroRange({~std::uint64_t{0} - 1, 5})), kLayout));
  EXPECT_NE(e.find("ZeroRange"), std::string::npos);
  e = errorOf(decodeZeroRange(payloadOf(encodeZeroRange({10, ~std::uint64_t{0}})), kLayout));
  EXPECT_NE(e.find("out of range"), std::string::npos);
  EXPECT_TRUE(decodeZeroRange(payloadOf(encodeZeroRange({0, 1000})), kLayout));
}

TEST(Frame, ResumeBitmapBounds) {
  Resume r{0, true, std::vector<std::uint64_t>(16, ~std::uint64_t{0})};
  auto d = decodeResume(payloadOf(encodeResume(r)), kLayout);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_TRUE(d->last);
  EXPECT_EQ(d->words.size(), 16u);
  r.words.assign(17, 0);  // 1000 pages need 16 words
  EXPECT_NE(errorOf(decodeResume(payloadOf(encodeResume(r)), kLayout)).find("out of range"),
            std::string::npos);
  r = Resume{3, false, {1}};
  EXPECT_NE(errorOf(decodeResume(payloadOf(encodeResume(r)), kLayout)).find("multiple of 64"),
            std::string::npos);
}

TEST(Frame, SmallFramesRejectTrailingBytesAndTruncation) {
  std::string f = encodeComplete({1000});
  EXPECT_TRUE(decodeComplete(payloadOf(f), kLayout));
  EXPECT_NE(errorOf(decodeComplete(payloadOf(encodeComplete({1001})), kLayout)).find("exceeds"),
            std::string::npos);
  EXPECT_FALSE(decodeComplete(payloadOf(f + "x"), kLayout));
  EXPECT_FALSE(decodePing(payloadOf(f.substr(0, kHeaderSize + 3))));
  auto err = decodeError(payloadOf(encodeError({3, "no"})));
  ASSERT_TRUE(err);
  EXPECT_EQ(err->code, 3);
  EXPECT_EQ(err->message, "no");
}

// The ending handshake's acknowledgement: a header of its own type and nothing after it.
TEST(Frame, CompleteAckIsAnEmptyFrameOfItsOwnType) {
  std::string f = encodeCompleteAck();
  ASSERT_EQ(f.size(), kHeaderSize);
  auto h = decodeHeader(bytes(f).first<kHeaderSize>(), Limits{});
  ASSERT_TRUE(h) << h.error().message();
  EXPECT_EQ(h->type, FrameType::kCompleteAck);
  EXPECT_EQ(h->length, 0u);
  EXPECT_EQ(frameTypeName(h->type), "CompleteAck");
  EXPECT_TRUE(decodeCompleteAck(payloadOf(f)));
  auto e = decodeCompleteAck(payloadOf(f + "x"));
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("CompleteAck: payload must be empty"), std::string::npos);
}

// Pre-copy's switch: the stale set travels as bitmap chunks of their own type, checked like
// Resume's, and errors name StalePages (not Resume) so a log says which exchange broke.
TEST(Frame, StalePagesIsABitmapChunkOfItsOwnType) {
  StalePages s{64, true, {0x5, 0}};
  std::string f = encodeStalePages(s);
  auto h = decodeHeader(bytes(f).first<kHeaderSize>(), Limits{});
  ASSERT_TRUE(h) << h.error().message();
  EXPECT_EQ(h->type, FrameType::kStalePages);
  EXPECT_EQ(frameTypeName(h->type), "StalePages");
  auto d = decodeStalePages(payloadOf(f), kLayout);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(d->first_page, 64u);
  EXPECT_TRUE(d->last);
  EXPECT_EQ(d->words, (std::vector<std::uint64_t>{0x5, 0}));
  s.words.assign(16, 0);  // 1000 pages need 16 words; from page 64 only 15 are left
  auto e = errorOf(decodeStalePages(payloadOf(encodeStalePages(s)), kLayout));
  EXPECT_NE(e.find("StalePages: bitmap words 1+16 out of range"), std::string::npos) << e;
  e = errorOf(decodeStalePages(payloadOf(encodeStalePages({5, false, {1}})), kLayout));
  EXPECT_NE(e.find("StalePages: first_page must be a multiple of 64"), std::string::npos) << e;
}

// Protocol 1.2's demand-fault timing: the source's own durations for one page, after its reply.
TEST(Frame, ServeTimesRoundTripAndValidation) {
  ServeTimes t{999, 123456789012ull, 42};
  std::string f = encodeServeTimes(t);
  auto h = decodeHeader(bytes(f).first<kHeaderSize>(), Limits{});
  ASSERT_TRUE(h) << h.error().message();
  EXPECT_EQ(h->type, FrameType::kServeTimes);
  EXPECT_EQ(h->flags, 0u);
  EXPECT_EQ(h->length, 24u);
  EXPECT_EQ(frameTypeName(h->type), "ServeTimes");
  auto d = decodeServeTimes(payloadOf(f), kLayout);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(d->page, 999u);
  EXPECT_EQ(d->waited_ns, 123456789012ull);
  EXPECT_EQ(d->served_ns, 42u);

  auto e = errorOf(decodeServeTimes(payloadOf(encodeServeTimes({1000, 0, 0})), kLayout));
  EXPECT_NE(e.find("ServeTimes: page 1000 out of range (page_count 1000)"), std::string::npos) << e;
  e = errorOf(decodeServeTimes(payloadOf(f + "x"), kLayout));
  EXPECT_NE(e.find("ServeTimes: payload must be 24 bytes"), std::string::npos) << e;
  e = errorOf(decodeServeTimes(payloadOf(f).first(23), kLayout));
  EXPECT_NE(e.find("ServeTimes: payload must be 24 bytes"), std::string::npos) << e;

  std::string next = f;
  next[5] = static_cast<char>(static_cast<std::uint8_t>(kLastFrameType) + 1);
  EXPECT_NE(errorOf(decodeHeader(bytes(next).first<kHeaderSize>(), Limits{}))
                .find("unknown frame type 15"),
            std::string::npos);
  next[5] = 0;
  EXPECT_NE(errorOf(decodeHeader(bytes(next).first<kHeaderSize>(), Limits{}))
                .find("unknown frame type 0"),
            std::string::npos);
}

// The request for ServeTimes is an ordinary Ping, so that a 1.1 source answers it with a Pong
// and nothing else: its nonce must never be one SourceLink's keepalive counter reaches.
TEST(Frame, ServeTimesAreAskedForWithAPingA11SourceAnswers) {
  auto d = decodePing(payloadOf(encodePing(FrameType::kPing, {kServeTimesWanted})));
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(d->nonce, kServeTimesWanted);
  EXPECT_GT(kServeTimesWanted, std::uint64_t{1} << 60);
}

}  // namespace
}  // namespace lazymig::transport

#include "transport/frame.h"

#include "base/bitmap.h"
#include "transport/frame_codec.h"

#include <cstring>

namespace lazymig::transport {
namespace {

using codec::bad;
using codec::frame;
using codec::Reader;
using codec::Writer;

bool validId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// first + count must lie within [0, page_count] without wrapping.
bool runInRange(std::uint64_t first, std::uint64_t count, std::uint64_t page_count) {
  return first < page_count && count <= page_count - first;
}

std::string rangeText(std::uint64_t first, std::uint64_t count, std::uint64_t page_count) {
  return "pages " + std::to_string(first) + "+" + std::to_string(count) +
         " out of range (page_count " + std::to_string(page_count) + ")";
}

}  // namespace

std::string_view frameTypeName(FrameType type) {
  switch (type) {
    case FrameType::kHello:
      return "Hello";
    case FrameType::kHelloOk:
      return "HelloOk";
    case FrameType::kError:
      return "Error";
    case FrameType::kPageRequest:
      return "PageRequest";
    case FrameType::kPageData:
      return "PageData";
    case FrameType::kZeroRange:
      return "ZeroRange";
    case FrameType::kResume:
      return "Resume";
    case FrameType::kBulkDone:
      return "BulkDone";
    case FrameType::kComplete:
      return "Complete";
    case FrameType::kPing:
      return "Ping";
    case FrameType::kPong:
      return "Pong";
    case FrameType::kCompleteAck:
      return "CompleteAck";
    case FrameType::kStalePages:
      return "StalePages";
    case FrameType::kServeTimes:
      return "ServeTimes";
  }
  return "Unknown";
}

void encodeHeader(FrameType type, std::uint32_t length, std::span<std::byte, kHeaderSize> out) {
  std::string tmp;
  Writer w(tmp);
  w.u32(kMagic);
  w.u8(kProtocolVersion);
  w.u8(static_cast<std::uint8_t>(type));
  w.u16(0);
  w.u32(length);
  std::memcpy(out.data(), tmp.data(), kHeaderSize);
}

Result<FrameHeader> decodeHeader(std::span<const std::byte, kHeaderSize> in, const Limits& limits) {
  Reader r(in);
  std::uint32_t magic = 0, length = 0;
  std::uint8_t version = 0, type = 0;
  std::uint16_t flags = 0;
  r.u32(magic);
  r.u8(version);
  r.u8(type);
  r.u16(flags);
  r.u32(length);
  auto err = [](const std::string& what) {
    return std::unexpected(Error::make(Errc::kProtocol, "frame header", what));
  };
  if (magic != kMagic) return err("bad magic (not a lazymig peer)");
  if (version != kProtocolVersion) {
    return err("protocol version " + std::to_string(version) +
               " is not supported (this agent speaks " + std::to_string(kProtocolVersion) + ")");
  }
  if (type < static_cast<std::uint8_t>(FrameType::kHello) ||
      type > static_cast<std::uint8_t>(kLastFrameType)) {
    return err("unknown frame type " + std::to_string(type));
  }
  if (flags != 0) return err("reserved flags 0x" + std::to_string(flags) + " must be 0");
  if (length > limits.max_payload) {
    return err(std::string(frameTypeName(static_cast<FrameType>(type))) + ": length " +
               std::to_string(length) + " exceeds the limit of " +
               std::to_string(limits.max_payload) + " bytes");
  }
  return FrameHeader{static_cast<FrameType>(type), flags, length};
}

std::string encodeHello(const Hello& m) {
  std::string p;
  Writer w(p);
  w.str16(m.migration_id);
  w.str16(m.token);
  w.u8(static_cast<std::uint8_t>(m.channel));
  w.u32(m.page_size);
  w.u64(m.memory_bytes);
  return frame(FrameType::kHello, p);
}

Result<Hello> decodeHello(std::span<const std::byte> payload) {
  Reader r(payload);
  Hello m;
  std::uint8_t channel = 0;
  if (!r.str16(m.migration_id)) return bad(FrameType::kHello, "truncated migration_id");
  if (!validId(m.migration_id))
    return bad(FrameType::kHello, "migration_id must be 1..128 of [A-Za-z0-9._-]");
  if (!r.str16(m.token)) return bad(FrameType::kHello, "truncated token");
  if (m.token.size() < 16 || m.token.size() > 128)
    return bad(FrameType::kHello, "token must be 16..128 bytes");
  if (!r.u8(channel) || !r.u32(m.page_size) || !r.u64(m.memory_bytes)) {
    return bad(FrameType::kHello, "truncated channel/page_size/memory_bytes");
  }
  if (channel != 1 && channel != 2)
    return bad(FrameType::kHello, "channel must be 1 (urgent) or 2 (bulk)");
  m.channel = static_cast<ChannelKind>(channel);
  // Both 0 on a bulk channel: a pre-copy destination before its VMM, which learns the layout
  // from the HelloOk (docs/protocol.md).
  if (!m.layoutUnknown() && (m.page_size < 4096 || (m.page_size & (m.page_size - 1)) != 0)) {
    return bad(FrameType::kHello,
               "page_size " + std::to_string(m.page_size) + " is not a power of two >= 4096");
  }
  if (r.remaining() != 0) return bad(FrameType::kHello, "trailing bytes");
  return m;
}

std::string encodeHelloOk(const HelloOk& m) {
  std::string p;
  Writer w(p);
  w.u32(m.page_size);
  w.u64(m.memory_bytes);
  return frame(FrameType::kHelloOk, p);
}

Result<HelloOk> decodeHelloOk(std::span<const std::byte> payload) {
  Reader r(payload);
  HelloOk m;
  if (!r.u32(m.page_size) || !r.u64(m.memory_bytes)) return bad(FrameType::kHelloOk, "truncated");
  if (r.remaining() != 0) return bad(FrameType::kHelloOk, "trailing bytes");
  return m;
}

std::string encodeError(const ErrorFrame& m) {
  std::string p;
  Writer w(p);
  w.u16(m.code);
  w.str16(m.message.substr(0, 1024));
  return frame(FrameType::kError, p);
}

Result<ErrorFrame> decodeError(std::span<const std::byte> payload) {
  Reader r(payload);
  ErrorFrame m;
  if (!r.u16(m.code) || !r.str16(m.message)) return bad(FrameType::kError, "truncated");
  if (m.message.size() > 1024) return bad(FrameType::kError, "message longer than 1024 bytes");
  if (r.remaining() != 0) return bad(FrameType::kError, "trailing bytes");
  return m;
}

std::string encodePageRequest(const PageRequest& m) {
  std::string p;
  Writer w(p);
  w.u32(static_cast<std::uint32_t>(m.pages.size()));
  for (auto page : m.pages) w.u64(page);
  return frame(FrameType::kPageRequest, p);
}

Result<PageRequest> decodePageRequest(std::span<const std::byte> payload, const Layout& layout,
                                      const Limits& limits) {
  Reader r(payload);
  std::uint32_t n = 0;
  if (!r.u32(n)) return bad(FrameType::kPageRequest, "truncated count");
  if (n == 0 || n > limits.max_request_pages) {
    return bad(FrameType::kPageRequest, "count " + std::to_string(n) + " not in 1.." +
                                            std::to_string(limits.max_request_pages));
  }
  if (r.remaining() != std::size_t{n} * 8) {
    return bad(FrameType::kPageRequest, "payload holds " + std::to_string(r.remaining()) +
                                            " bytes of pages, count says " +
                                            std::to_string(n * 8ull));
  }
  PageRequest m;
  m.pages.resize(n);
  for (auto& page : m.pages) {
    r.u64(page);
    if (page >= layout.page_count) {
      return bad(FrameType::kPageRequest, "page " + std::to_string(page) +
                                              " out of range (page_count " +
                                              std::to_string(layout.page_count) + ")");
    }
  }
  return m;
}

std::array<std::byte, kPageDataPrefixSize> encodePageDataPrefix(std::uint64_t first_page,
                                                                std::uint32_t count,
                                                                std::uint32_t page_size) {
  std::array<std::byte, kPageDataPrefixSize> out{};
  encodeHeader(FrameType::kPageData,
               static_cast<std::uint32_t>(12 + std::uint64_t{count} * page_size),
               std::span<std::byte, kHeaderSize>(out.data(), kHeaderSize));
  std::string tail;
  Writer w(tail);
  w.u64(first_page);
  w.u32(count);
  std::memcpy(out.data() + kHeaderSize, tail.data(), tail.size());
  return out;
}

Result<PageData> decodePageData(std::span<const std::byte> payload, const Layout& layout) {
  Reader r(payload);
  PageData m;
  if (!r.u64(m.first_page) || !r.u32(m.count))
    return bad(FrameType::kPageData, "truncated first_page/count");
  if (m.count == 0) return bad(FrameType::kPageData, "count must be at least 1");
  if (!runInRange(m.first_page, m.count, layout.page_count)) {
    return bad(FrameType::kPageData, rangeText(m.first_page, m.count, layout.page_count));
  }
  std::uint64_t want = std::uint64_t{m.count} * layout.page_size;
  if (r.remaining() != want) {
    return bad(FrameType::kPageData, "data is " + std::to_string(r.remaining()) + " bytes, " +
                                         std::to_string(m.count) + " pages need " +
                                         std::to_string(want));
  }
  m.data = r.rest();
  return m;
}

std::string encodeZeroRange(const ZeroRange& m) {
  std::string p;
  Writer w(p);
  w.u64(m.first_page);
  w.u64(m.count);
  return frame(FrameType::kZeroRange, p);
}

Result<ZeroRange> decodeZeroRange(std::span<const std::byte> payload, const Layout& layout) {
  Reader r(payload);
  ZeroRange m;
  if (!r.u64(m.first_page) || !r.u64(m.count)) return bad(FrameType::kZeroRange, "truncated");
  if (r.remaining() != 0) return bad(FrameType::kZeroRange, "trailing bytes");
  if (m.count == 0) return bad(FrameType::kZeroRange, "count must be at least 1");
  if (!runInRange(m.first_page, m.count, layout.page_count)) {
    return bad(FrameType::kZeroRange, rangeText(m.first_page, m.count, layout.page_count));
  }
  return m;
}

std::string encodeBulkDone(const BulkDone& m) {
  std::string p;
  Writer(p).u64(m.pages_sent);
  return frame(FrameType::kBulkDone, p);
}

Result<BulkDone> decodeBulkDone(std::span<const std::byte> payload) {
  Reader r(payload);
  BulkDone m;
  if (!r.u64(m.pages_sent) || r.remaining() != 0)
    return bad(FrameType::kBulkDone, "payload must be 8 bytes");
  return m;
}

std::string encodeComplete(const Complete& m) {
  std::string p;
  Writer(p).u64(m.pages_installed);
  return frame(FrameType::kComplete, p);
}

Result<Complete> decodeComplete(std::span<const std::byte> payload, const Layout& layout) {
  Reader r(payload);
  Complete m;
  if (!r.u64(m.pages_installed) || r.remaining() != 0) {
    return bad(FrameType::kComplete, "payload must be 8 bytes");
  }
  if (m.pages_installed > layout.page_count) {
    return bad(FrameType::kComplete, "pages_installed " + std::to_string(m.pages_installed) +
                                         " exceeds page_count " +
                                         std::to_string(layout.page_count));
  }
  return m;
}

std::string encodePing(FrameType ping_or_pong, const Ping& m) {
  std::string p;
  Writer(p).u64(m.nonce);
  return frame(ping_or_pong, p);
}

Result<Ping> decodePing(std::span<const std::byte> payload) {
  Reader r(payload);
  Ping m;
  if (!r.u64(m.nonce) || r.remaining() != 0)
    return bad(FrameType::kPing, "payload must be 8 bytes");
  return m;
}

std::string encodeCompleteAck() { return frame(FrameType::kCompleteAck, {}); }

Status decodeCompleteAck(std::span<const std::byte> payload) {
  if (!payload.empty()) return bad(FrameType::kCompleteAck, "payload must be empty");
  return {};
}

std::string encodeServeTimes(const ServeTimes& m) {
  std::string p;
  Writer w(p);
  w.u64(m.page);
  w.u64(m.waited_ns);
  w.u64(m.served_ns);
  return frame(FrameType::kServeTimes, p);
}

Result<ServeTimes> decodeServeTimes(std::span<const std::byte> payload, const Layout& layout) {
  Reader r(payload);
  ServeTimes m;
  if (!r.u64(m.page) || !r.u64(m.waited_ns) || !r.u64(m.served_ns) || r.remaining() != 0) {
    return bad(FrameType::kServeTimes, "payload must be 24 bytes");
  }
  if (m.page >= layout.page_count) {
    return bad(FrameType::kServeTimes, "page " + std::to_string(m.page) +
                                           " out of range (page_count " +
                                           std::to_string(layout.page_count) + ")");
  }
  return m;
}

}  // namespace lazymig::transport

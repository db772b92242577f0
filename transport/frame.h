// The wire protocol between lazymig agents (documented in docs/protocol.md).
//
// Every frame: a 12-byte header, then `length` bytes of payload. All integers little-endian.
//   offset 0  u32 magic   0x474D5A4C ("LZMG" on the wire)
//   offset 4  u8  version 1
//   offset 5  u8  type    FrameType
//   offset 6  u16 flags   0 (reserved; non-zero is rejected)
//   offset 8  u32 length  payload bytes; checked against Limits before anything is allocated
// Decoders never trust a peer: every count, index and length is bounds-checked, and an error
// names the frame type and the field.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace lazymig::transport {

constexpr std::uint32_t kMagic = 0x474D5A4C;
constexpr std::uint8_t kProtocolVersion = 1;
constexpr std::size_t kHeaderSize = 12;

enum class FrameType : std::uint8_t {
  kHello = 1,        // client -> server, first frame on every connection
  kHelloOk = 2,      // server -> client, the channel is open
  kError = 3,        // either way; the sender closes after it
  kPageRequest = 4,  // destination -> source (urgent): pages a vCPU is blocked on
  kPageData = 5,     // source -> destination: contents of a run of contiguous pages
  kZeroRange = 6,    // source -> destination: a run of contiguous all-zero pages (no data)
  kResume = 7,       // destination -> source (bulk): a chunk of the installed-page bitmap
  kBulkDone = 8,     // source -> destination (bulk): every page not known installed was sent
  kComplete = 9,     // destination -> source (urgent): every page installed; source may release
  kPing = 10,
  kPong = 11,
  // source -> destination (urgent): the source has durably recorded the migration completed
  // and releases the memory. Also the source's answer to a Hello for a migration it finished.
  kCompleteAck = 12,
  // source -> destination (bulk): pre-copy is over (the source VM is paused); a chunk of the
  // bitmap of pages whose pre-copied copy may be older than the paused memory. The destination
  // must never install those from a pre-copied copy; `last` ends the set (protocol 1.2).
  kStalePages = 13,
  // source -> destination (urgent): how long the source held one demand page, by its own
  // clock, sent right after the page's reply -- only to a destination that asked for it with
  // a Ping of kServeTimesWanted (protocol 1.2).
  kServeTimes = 14,
};

// The highest frame type this agent knows; decodeHeader refuses every type above it.
constexpr FrameType kLastFrameType = FrameType::kServeTimes;

// The nonce of the Ping by which a destination asks for ServeTimes on its urgent channel
// ("SERVETMS" in ASCII). A protocol 1.1 source answers it as any Ping (a Pong) and never sends
// ServeTimes; a 1.2 source answers the Pong and follows every demand reply on that connection
// with one. So neither side ever receives a frame type it does not know.
constexpr std::uint64_t kServeTimesWanted = 0x534D544556524553;

std::string_view frameTypeName(FrameType type);

enum class ChannelKind : std::uint8_t { kUrgent = 1, kBulk = 2 };

struct Limits {
  std::uint32_t max_payload = 4 * 1024 * 1024 + 64;
  std::uint32_t max_request_pages = 1024;  // per kPageRequest
};

struct FrameHeader {
  FrameType type{};
  std::uint16_t flags = 0;
  std::uint32_t length = 0;
};

// The guest memory a frame's page indexes must fall inside.
struct Layout {
  std::uint32_t page_size = 4096;
  std::uint64_t page_count = 0;
};

struct Hello {
  std::string migration_id;  // 1..128 bytes of [A-Za-z0-9._-]
  std::string token;         // 16..128 bytes, compared in constant time by the server
  ChannelKind channel = ChannelKind::kUrgent;
  std::uint32_t page_size = 0;
  std::uint64_t memory_bytes = 0;  // what the destination expects; the source checks it
  // A bulk Hello with page_size and memory_bytes 0: a pre-copy destination that does not know
  // the layout yet (no VMM yet); the source answers with its own.
  bool layoutUnknown() const {
    return page_size == 0 && memory_bytes == 0 && channel == ChannelKind::kBulk;
  }
};

struct HelloOk {
  std::uint32_t page_size = 0;
  std::uint64_t memory_bytes = 0;
};

struct ErrorFrame {
  std::uint16_t code = 0;
  std::string message;  // at most 1024 bytes
};

struct PageRequest {
  std::vector<std::uint64_t> pages;  // 1..Limits::max_request_pages, each < page_count
};

// A view into the received frame's payload: no copy of the page contents.
struct PageData {
  std::uint64_t first_page = 0;
  std::uint32_t count = 0;
  std::span<const std::byte> data;  // count * page_size bytes
};

struct ZeroRange {
  std::uint64_t first_page = 0;
  std::uint64_t count = 0;
};

// A chunk of the destination's installed-page bitmap: bit i of words[j] is page
// first_page + 64*j + i. first_page is a multiple of 64. `last` ends the resume exchange.
struct Resume {
  std::uint64_t first_page = 0;
  bool last = false;
  std::vector<std::uint64_t> words;
};

// The same chunk layout as Resume: bit i of words[j] is page first_page + 64*j + i; a set bit
// names a stale page. Even an empty stale set is sent (one chunk of zero words with `last`):
// the destination waits for `last` before it installs any pre-copied page.
struct StalePages {
  std::uint64_t first_page = 0;
  bool last = false;
  std::vector<std::uint64_t> words;
};

// The source's own durations for one demand page (its steady clock; durations only, so no
// clock is compared across hosts). `page` is the page the reply before it carried.
//   waited_ns: from its loop reading the PageRequest to starting on this page (earlier pages
//              of the same request included);
//   served_ns: reading the page, framing it and queueing it on the connection.
struct ServeTimes {
  std::uint64_t page = 0;
  std::uint64_t waited_ns = 0;
  std::uint64_t served_ns = 0;
};

struct BulkDone {
  std::uint64_t pages_sent = 0;
};

struct Complete {
  std::uint64_t pages_installed = 0;
};

struct Ping {
  std::uint64_t nonce = 0;
};

// --- header ---
void encodeHeader(FrameType type, std::uint32_t length, std::span<std::byte, kHeaderSize> out);
// Checks magic, version, flags, a known type and length <= limits.max_payload.
Result<FrameHeader> decodeHeader(std::span<const std::byte, kHeaderSize> in, const Limits& limits);

// --- whole frames (header + payload) for the small, non-page frames ---
std::string encodeHello(const Hello& m);
std::string encodeHelloOk(const HelloOk& m);
std::string encodeError(const ErrorFrame& m);
std::string encodePageRequest(const PageRequest& m);
std::string encodeZeroRange(const ZeroRange& m);
std::string encodeResume(const Resume& m);
std::string encodeStalePages(const StalePages& m);
std::string encodeBulkDone(const BulkDone& m);
std::string encodeComplete(const Complete& m);
std::string encodePing(FrameType ping_or_pong, const Ping& m);
std::string encodeCompleteAck();  // no payload
std::string encodeServeTimes(const ServeTimes& m);

// A kPageData frame is sent as this prefix (header + first_page + count) followed by the page
// bytes themselves, so the sender can hand the page contents to the socket without a copy.
constexpr std::size_t kPageDataPrefixSize = kHeaderSize + 8 + 4;
std::array<std::byte, kPageDataPrefixSize> encodePageDataPrefix(std::uint64_t first_page,
                                                                std::uint32_t count,
                                                                std::uint32_t page_size);

// --- payload decoders (the payload after the header) ---
Result<Hello> decodeHello(std::span<const std::byte> payload);
Result<HelloOk> decodeHelloOk(std::span<const std::byte> payload);
Result<ErrorFrame> decodeError(std::span<const std::byte> payload);
Result<PageRequest> decodePageRequest(std::span<const std::byte> payload, const Layout& layout,
                                      const Limits& limits);
Result<PageData> decodePageData(std::span<const std::byte> payload, const Layout& layout);
Result<ZeroRange> decodeZeroRange(std::span<const std::byte> payload, const Layout& layout);
Result<Resume> decodeResume(std::span<const std::byte> payload, const Layout& layout);
Result<StalePages> decodeStalePages(std::span<const std::byte> payload, const Layout& layout);
Result<BulkDone> decodeBulkDone(std::span<const std::byte> payload);
Result<Complete> decodeComplete(std::span<const std::byte> payload, const Layout& layout);
Result<Ping> decodePing(std::span<const std::byte> payload);
Status decodeCompleteAck(std::span<const std::byte> payload);
Result<ServeTimes> decodeServeTimes(std::span<const std::byte> payload, const Layout& layout);

}  // namespace lazymig::transport

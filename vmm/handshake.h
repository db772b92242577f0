// The VMM-facing interface (see ../shared/PROTOCOLS.md sections 1 and 2): Firecracker's
// external page-fault handler handshake, its guest_memfd variant, and the source-side
// handover of guest memory. One codec for both sides: the agent parses, lazymig-testvm
// encodes.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "sys/unique_fd.h"
#include "sys/unix_socket.h"

namespace lazymig::vmm {

// One guest memory region as Firecracker describes it.
struct GuestRegionMapping {
  std::uint64_t base_host_virt_addr = 0;   // start in the VMM's address space
  std::uint64_t size = 0;                  // bytes
  std::uint64_t offset = 0;                // where its bytes start in guest memory / the file
  std::uint64_t page_size = 4096;          // bytes (Firecracker's page_size, or page_size_kib)
  std::optional<std::uint64_t> gpa_start;  // guest_memfd variant only
  bool is_guest_memfd = false;
};

enum class HandshakeKind {
  kClassic,  // one fd: the uffd
  // Two fds: the uffd and the shared memory (memfd, hugetlbfs) the regions map, registered
  // MISSING | MINOR. A lazymig extension of the classic handshake: with the memory fd the
  // handler fills the page cache through its own mapping and maps pages with UFFDIO_CONTINUE.
  kSharedMinor,
  kGuestMemfd,  // three fds: uffd, guest_memfd, userfault bitmap
};
std::string_view handshakeKindName(HandshakeKind kind);

// The fds travel by position (SCM_RIGHTS), never by name; what each position holds depends on
// who receives it (see Receiver), and each member below holds only what its name says.
struct Handshake {
  HandshakeKind kind = HandshakeKind::kClassic;
  std::vector<GuestRegionMapping> regions;  // sorted by offset
  std::uint64_t page_size = 4096;
  std::uint64_t total_bytes = 0;  // sum of region sizes
  // A userfaultfd: a destination's fd 0 (MISSING or MINOR); a live source's fd 1, registered
  // write-protect with WP_ASYNC for pre-copy's write tracking; a paused source has none.
  sys::UniqueFd uffd;
  // The guest memory itself: a source handover's fd 0; a destination's fd 1 (kSharedMinor:
  // the memfd or hugetlbfs file; kGuestMemfd: the guest_memfd). Named guest_memfd before,
  // and the source's memory fd travelled in `uffd`.
  sys::UniqueFd memory;
  sys::UniqueFd userfault_bitmap;  // destination, kGuestMemfd only: fd 2
  sys::UniqueFd pagemap;           // live source only: fd 2, the VMM's /proc/self/pagemap
};

struct ParseLimits {
  std::size_t max_regions = 64;
  std::uint64_t max_total_bytes = 1ull << 44;  // 16 TiB
};

// Parses and validates the JSON array of mappings: every field present with the right type
// (unknown fields ignored), page_size a power of two >= 4096 and the same for all regions
// (page_size, else page_size_kib -- which holds bytes despite its name -- else 4096),
// base addresses, sizes and offsets page-aligned and non-zero size, offsets contiguous from
// 0 in order (each the running sum of the earlier sizes), host ranges not overlapping.
// Errors name the region index and the field.
Result<std::vector<GuestRegionMapping>> parseMappings(std::string_view json,
                                                      const ParseLimits& limits = {});
std::string encodeMappings(const std::vector<GuestRegionMapping>& regions);

// Who receives a handshake: the destination (uffd, then the shared memory or guest_memfd,
// then the userfault bitmap) or the source (the paused guest's memory alone, or a live source's
// memory, write-protect uffd and pagemap: vmm/source_handover.h).
enum class Receiver { kDestination, kSource };

// Receives one handshake message (JSON + 1, 2 or 3 fds) from an accepted connection, waiting at
// most `timeout`, or until `cancel_fd` (an eventfd) is signalled. The fd count selects the
// kind; any other count is an error. A source takes its memory into `memory`, and a live
// source's write-protect uffd and pagemap into `uffd` and `pagemap`.
Result<Handshake> receiveHandshake(const sys::UnixSocket& socket, std::chrono::milliseconds timeout,
                                   const ParseLimits& limits = {}, int cancel_fd = -1,
                                   Receiver receiver = Receiver::kDestination);
// Checks that every handed-over fd is what its place in the message says, before anything
// uses it: a pipe or /dev/null where the uffd should be would otherwise fail the migration at
// its first ioctl, after the VMM can no longer hand over. Errors name the fd's place in the
// message and what it really is ("fd 0 is not a userfaultfd (it is /dev/null)").
Status checkHandedFds(const Handshake& handshake, Receiver receiver);

Status sendHandshake(const sys::UnixSocket& socket, const std::vector<GuestRegionMapping>& regions,
                     std::span<const int> fds);

// guest_memfd variant messages, JSON objects back to back on the same socket.
struct FaultRequest {
  std::uint32_t vcpu = 0;
  std::uint64_t offset = 0;
  std::uint64_t flags = 0;
  std::optional<std::uint64_t> gpa;  // also accepted under the older name "token"
};
struct FaultReply {
  std::optional<std::uint32_t> vcpu;
  std::uint64_t offset = 0;
  std::uint64_t len = 0;
  std::uint64_t flags = 0;
  std::optional<std::uint64_t> gpa;
  bool zero = false;
};

// Splits a byte stream of concatenated JSON objects. feed() appends bytes; next() returns
// the next complete object's text, nothing when more bytes are needed, or an error when the
// stream is malformed or one object exceeds max_object_bytes.
class JsonObjectStream {
 public:
  explicit JsonObjectStream(std::size_t max_object_bytes = 64 * 1024)
      : max_object_bytes_(max_object_bytes) {}
  void feed(std::string_view bytes) { buffer_.append(bytes); }
  Result<std::optional<std::string>> next();

 private:
  std::string buffer_;
  std::size_t max_object_bytes_;
};

Result<FaultRequest> parseFaultRequest(std::string_view json);
std::string encodeFaultRequest(const FaultRequest& request);
Result<FaultReply> parseFaultReply(std::string_view json);
std::string encodeFaultReply(const FaultReply& reply);

}  // namespace lazymig::vmm

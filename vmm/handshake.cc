#include "vmm/handshake.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "base/strict_json.h"
#include "sys/memory_fd.h"
#include "sys/uffd.h"
#include "vmm/source_handover.h"

namespace lazymig::vmm {
namespace {

using nlohmann::json;

std::unexpected<Error> bad(const std::string& what) {
  return std::unexpected(Error::make(Errc::kInvalidArgument, "handshake", what));
}

std::unexpected<Error> badField(std::size_t region, const std::string& field,
                                const std::string& why) {
  return bad("region " + std::to_string(region) + " field '" + field + "': " + why);
}

// A non-negative integer field, or nothing when absent/null.
Result<std::optional<std::uint64_t>> optionalU64(const json& obj, std::size_t region,
                                                 const char* field) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return std::optional<std::uint64_t>();
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<std::int64_t>() >= 0)) {
    return badField(region, field, "must be a non-negative integer");
  }
  return std::optional<std::uint64_t>(it->get<std::uint64_t>());
}

Result<std::uint64_t> requiredU64(const json& obj, std::size_t region, const char* field) {
  auto v = optionalU64(obj, region, field);
  if (!v) return std::unexpected(v.error());
  if (!*v) return badField(region, field, "is required");
  return **v;
}

bool isPowerOfTwo(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Where a JSON text stops being valid: 0 when it is complete, text.size() + 1 when it is only
// cut short (more bytes may complete it), else the 1-based byte where it went wrong.
class JsonErrorPosition final : public nlohmann::json_sax<json> {
 public:
  static std::size_t of(std::string_view text) {
    JsonErrorPosition probe;
    json::sax_parse(text, &probe);
    return probe.position_;
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception&) override {
    position_ = position;
    return false;
  }

 private:
  std::size_t position_ = 0;
};

}  // namespace

Result<std::vector<GuestRegionMapping>> parseMappings(std::string_view text,
                                                      const ParseLimits& limits) {
  auto parsed = parseStrictJson(text, "the mappings");
  if (!parsed) return bad("the mappings: " + parsed.error().context);
  json doc = std::move(*parsed);
  if (!doc.is_array()) return bad("the mappings must be a JSON array of regions");
  if (doc.empty()) return bad("no regions");
  if (doc.size() > limits.max_regions) {
    return bad(std::to_string(doc.size()) + " regions exceed the limit of " +
               std::to_string(limits.max_regions));
  }
  std::vector<GuestRegionMapping> out;
  for (std::size_t i = 0; i < doc.size(); ++i) {
    const json& r = doc[i];
    if (!r.is_object()) return bad("region " + std::to_string(i) + " is not an object");
    GuestRegionMapping m;
    auto base = requiredU64(r, i, "base_host_virt_addr");
    if (!base) return std::unexpected(base.error());
    auto size = requiredU64(r, i, "size");
    if (!size) return std::unexpected(size.error());
    auto offset = requiredU64(r, i, "offset");
    if (!offset) return std::unexpected(offset.error());
    auto ps = optionalU64(r, i, "page_size");
    if (!ps) return std::unexpected(ps.error());
    auto ps_kib = optionalU64(r, i, "page_size_kib");  // holds bytes, despite its name
    if (!ps_kib) return std::unexpected(ps_kib.error());
    m.page_size = ps->value_or(ps_kib->value_or(4096));
    auto gpa = optionalU64(r, i, "gpa_start");
    if (!gpa) return std::unexpected(gpa.error());
    m.gpa_start = *gpa;
    if (auto it = r.find("is_guest_memfd"); it != r.end() && !it->is_null()) {
      if (!it->is_boolean()) return badField(i, "is_guest_memfd", "must be a boolean");
      m.is_guest_memfd = it->get<bool>();
    }
    m.base_host_virt_addr = *base;
    m.size = *size;
    m.offset = *offset;
    if (!isPowerOfTwo(m.page_size) || m.page_size < 4096) {
      return badField(i, "page_size",
                      "must be a power of two >= 4096, got " + std::to_string(m.page_size));
    }
    if (!out.empty() && m.page_size != out.front().page_size) {
      return badField(i, "page_size",
                      "differs from region 0 (" + std::to_string(out.front().page_size) + ")");
    }
    if (m.size == 0 || m.size % m.page_size != 0) {
      return badField(i, "size",
                      "must be a non-zero multiple of page_size " + std::to_string(m.page_size) +
                          ", got " + std::to_string(m.size));
    }
    if (m.base_host_virt_addr % m.page_size != 0) {
      return badField(i, "base_host_virt_addr", "must be aligned to page_size");
    }
    if (m.offset % m.page_size != 0) return badField(i, "offset", "must be aligned to page_size");
    if (m.base_host_virt_addr + m.size < m.base_host_virt_addr) {
      return badField(i, "size", "base_host_virt_addr + size overflows");
    }
    if (m.gpa_start && *m.gpa_start % m.page_size != 0) {
      return badField(i, "gpa_start", "must be aligned to page_size");
    }
    out.push_back(m);
  }
  std::vector<std::size_t> order(out.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](auto a, auto b) { return out[a].offset < out[b].offset; });
  std::uint64_t expect = 0;
  for (auto i : order) {
    if (out[i].offset != expect) {
      return badField(i, "offset",
                      "expected " + std::to_string(expect) +
                          " (the sum of the earlier regions' sizes), got " +
                          std::to_string(out[i].offset));
    }
    expect += out[i].size;
    if (expect > limits.max_total_bytes) return bad("regions total more than the limit");
  }
  std::sort(order.begin(), order.end(), [&](auto a, auto b) {
    return out[a].base_host_virt_addr < out[b].base_host_virt_addr;
  });
  for (std::size_t k = 1; k < order.size(); ++k) {
    const auto& prev = out[order[k - 1]];
    if (prev.base_host_virt_addr + prev.size > out[order[k]].base_host_virt_addr) {
      return badField(order[k], "base_host_virt_addr",
                      "overlaps region " + std::to_string(order[k - 1]));
    }
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.offset < b.offset; });
  return out;
}

std::string encodeMappings(const std::vector<GuestRegionMapping>& regions) {
  json out = json::array();
  for (const auto& r : regions) {
    json j{{"base_host_virt_addr", r.base_host_virt_addr},
           {"size", r.size},
           {"offset", r.offset},
           {"page_size", r.page_size},
           {"page_size_kib", r.page_size}};
    if (r.gpa_start) j["gpa_start"] = *r.gpa_start;
    if (r.is_guest_memfd) j["is_guest_memfd"] = true;
    out.push_back(j);
  }
  return out.dump();
}

Result<Handshake> receiveHandshake(const sys::UnixSocket& socket, std::chrono::milliseconds timeout,
                                   const ParseLimits& limits, int cancel_fd, Receiver receiver) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto remaining = [&] {
    return std::max(std::chrono::milliseconds(1),
                    std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now()));
  };
  if (auto ok = socket.waitReadable(remaining(), cancel_fd); !ok)
    return std::unexpected(ok.error());
  auto msg = socket.receiveWithFds(64 * 1024, 3);
  if (!msg) return std::unexpected(msg.error());
  if (msg->data.empty() && msg->fds.empty()) {
    return fail(Errc::kClosed, "handshake", "the VMM closed the socket without a handshake");
  }
  Handshake h;
  std::size_t nfds = msg->fds.size();
  if (receiver == Receiver::kSource && nfds != 1 && nfds != 3) {
    return bad(
        "expected 1 file descriptor (the guest memory) or 3 (a live source: the memory, a "
        "write-protect userfaultfd and the VMM's pagemap), got " +
        std::to_string(nfds));
  }
  if (nfds == 1) {
    h.kind = HandshakeKind::kClassic;
  } else if (nfds == 2) {
    h.kind = HandshakeKind::kSharedMinor;
  } else if (nfds == 3) {
    h.kind = HandshakeKind::kGuestMemfd;
  } else {
    return bad(
        "expected 1 file descriptor (uffd), 2 (uffd, shared memory fd) or 3 (uffd, guest_memfd, "
        "userfault bitmap), got " +
        std::to_string(nfds));
  }
  // A long region list may arrive in several reads; only the first carries the fds. Text that
  // no later bytes can repair is refused at once, not at the timeout.
  std::string text = std::move(msg->data);
  for (std::size_t at; (at = JsonErrorPosition::of(text)) != 0;) {
    if (at <= text.size()) {
      return bad("the mappings are not valid JSON (byte " + std::to_string(at) + " of " +
                 std::to_string(text.size()) + ")");
    }
    if (text.size() >= 64 * 1024) return bad("the mappings exceed 64 KiB");
    if (auto ok = socket.waitReadable(remaining(), cancel_fd); !ok) {
      return bad("incomplete mappings JSON: " + ok.error().message());
    }
    auto more = socket.receiveSome(64 * 1024 - text.size());
    if (!more) return std::unexpected(more.error());
    if (more->empty()) return bad("the VMM closed the socket in the middle of the mappings");
    text += *more;
  }
  auto regions = parseMappings(text, limits);
  if (!regions) return std::unexpected(regions.error());
  h.regions = std::move(*regions);
  h.page_size = h.regions.front().page_size;
  for (const auto& r : h.regions) h.total_bytes += r.size;
  if (receiver == Receiver::kSource) {
    h.memory = std::move(msg->fds[0]);
    if (nfds == 3) {
      h.uffd = std::move(msg->fds[1]);
      h.pagemap = std::move(msg->fds[2]);
    }
    return h;
  }
  h.uffd = std::move(msg->fds[0]);
  if (nfds >= 2) h.memory = std::move(msg->fds[1]);
  if (nfds == 3) h.userfault_bitmap = std::move(msg->fds[2]);
  return h;
}

Status checkHandedFds(const Handshake& h, Receiver receiver) {
  auto refuse = [](int place, const sys::UniqueFd& fd, const std::string& should_be) {
    return bad("fd " + std::to_string(place) + " is not " + should_be + " (it is " + fd.describe() +
               ")");
  };
  if (receiver == Receiver::kSource) return checkSourceFds(h);
  if (!sys::Uffd::isUserfaultfd(h.uffd)) return refuse(0, h.uffd, "a userfaultfd");
  if (h.memory.valid() && !sys::isSharedMemory(h.memory)) {
    return refuse(1, h.memory,
                  h.kind == HandshakeKind::kGuestMemfd
                      ? "a guest_memfd (or a memfd standing in for one)"
                      : "shared guest memory (a memfd or a hugetlbfs file)");
  }
  if (h.userfault_bitmap.valid() &&
      (!sys::isSharedMemory(h.userfault_bitmap) || sys::isGuestMemfd(h.userfault_bitmap))) {
    return refuse(2, h.userfault_bitmap, "a userfault bitmap memfd");
  }
  return {};
}

std::string_view handshakeKindName(HandshakeKind kind) {
  switch (kind) {
    case HandshakeKind::kClassic:
      return "classic";
    case HandshakeKind::kSharedMinor:
      return "shared_minor";
    case HandshakeKind::kGuestMemfd:
      return "guest_memfd";
  }
  return "unknown";
}

Status sendHandshake(const sys::UnixSocket& socket, const std::vector<GuestRegionMapping>& regions,
                     std::span<const int> fds) {
  return socket.sendWithFds(encodeMappings(regions), fds);
}

Result<std::optional<std::string>> JsonObjectStream::next() {
  std::size_t i = 0;
  while (i < buffer_.size() && std::isspace(static_cast<unsigned char>(buffer_[i]))) ++i;
  buffer_.erase(0, i);
  if (buffer_.empty()) return std::optional<std::string>();
  if (buffer_[0] != '{')
    return bad("VMM message stream: expected '{', got '" + buffer_.substr(0, 1) + "'");
  int depth = 0;
  bool in_string = false, escaped = false;
  for (std::size_t k = 0; k < buffer_.size(); ++k) {
    if (k >= max_object_bytes_)
      return bad("VMM message larger than " + std::to_string(max_object_bytes_) + " bytes");
    char c = buffer_[k];
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"')
      in_string = true;
    else if (c == '{')
      ++depth;
    else if (c == '}' && --depth == 0) {
      std::string obj = buffer_.substr(0, k + 1);
      buffer_.erase(0, k + 1);
      return std::optional<std::string>(std::move(obj));
    }
  }
  if (buffer_.size() > max_object_bytes_) {
    return bad("VMM message larger than " + std::to_string(max_object_bytes_) + " bytes");
  }
  return std::optional<std::string>();
}

namespace {

// A non-negative integer field of a fault message. nlohmann's get<> would convert a float
// (1e300) or a negative number without complaint -- undefined behaviour for the first -- so
// only JSON unsigned integers pass.
Result<std::optional<std::uint64_t>> faultField(const json& j, std::string_view message,
                                                const char* field, bool required) {
  auto it = j.find(field);
  auto where = std::string(message) + " field '" + field + "': ";
  if (it == j.end() || it->is_null()) {
    if (required) return bad(where + "is required");
    return std::optional<std::uint64_t>();
  }
  if (!it->is_number_unsigned()) return bad(where + "must be a non-negative integer");
  return std::optional<std::uint64_t>(it->get<std::uint64_t>());
}

Result<std::optional<std::uint32_t>> vcpuField(const json& j, std::string_view message,
                                               bool required) {
  auto v = faultField(j, message, "vcpu", required);
  if (!v) return std::unexpected(v.error());
  if (!*v) return std::optional<std::uint32_t>();
  if (**v > UINT32_MAX) return bad(std::string(message) + " field 'vcpu': out of range");
  return std::optional<std::uint32_t>(static_cast<std::uint32_t>(**v));
}

}  // namespace

Result<FaultRequest> parseFaultRequest(std::string_view text) {
  auto parsed = parseStrictJson(text, "FaultRequest");
  if (!parsed) return bad("FaultRequest: " + parsed.error().context);
  json j = std::move(*parsed);
  if (!j.is_object()) return bad("FaultRequest: not a JSON object");
  FaultRequest r;
  auto vcpu = vcpuField(j, "FaultRequest", true);
  if (!vcpu) return std::unexpected(vcpu.error());
  r.vcpu = **vcpu;
  auto offset = faultField(j, "FaultRequest", "offset", true);
  if (!offset) return std::unexpected(offset.error());
  r.offset = **offset;
  auto flags = faultField(j, "FaultRequest", "flags", false);
  if (!flags) return std::unexpected(flags.error());
  r.flags = flags->value_or(0);
  auto gpa = faultField(j, "FaultRequest", j.contains("gpa") ? "gpa" : "token", false);
  if (!gpa) return std::unexpected(gpa.error());
  r.gpa = *gpa;
  return r;
}

std::string encodeFaultRequest(const FaultRequest& r) {
  json j{{"vcpu", r.vcpu}, {"offset", r.offset}, {"flags", r.flags}};
  j["gpa"] = r.gpa ? json(*r.gpa) : json(nullptr);
  return j.dump();
}

Result<FaultReply> parseFaultReply(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return bad("FaultReply: not a JSON object");
  FaultReply r;
  auto vcpu = vcpuField(j, "FaultReply", false);
  if (!vcpu) return std::unexpected(vcpu.error());
  r.vcpu = *vcpu;
  auto offset = faultField(j, "FaultReply", "offset", true);
  if (!offset) return std::unexpected(offset.error());
  r.offset = **offset;
  auto len = faultField(j, "FaultReply", "len", true);
  if (!len) return std::unexpected(len.error());
  r.len = **len;
  auto flags = faultField(j, "FaultReply", "flags", false);
  if (!flags) return std::unexpected(flags.error());
  r.flags = flags->value_or(0);
  auto gpa = faultField(j, "FaultReply", j.contains("gpa") ? "gpa" : "token", false);
  if (!gpa) return std::unexpected(gpa.error());
  r.gpa = *gpa;
  auto zero = j.find("zero");
  if (zero != j.end() && !zero->is_null()) {
    if (!zero->is_boolean()) return bad("FaultReply field 'zero': must be true or false");
    r.zero = zero->get<bool>();
  }
  return r;
}

std::string encodeFaultReply(const FaultReply& r) {
  json j{{"offset", r.offset}, {"len", r.len}, {"flags", r.flags}, {"zero", r.zero}};
  j["vcpu"] = r.vcpu ? json(*r.vcpu) : json(nullptr);
  j["gpa"] = r.gpa ? json(*r.gpa) : json(nullptr);
  return j.dump();
}

}  // namespace lazymig::vmm

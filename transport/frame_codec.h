// What every frame codec is built on (transport/frame.cc, bitmap_frames.cc): the little-endian
// byte writer, the bounded reader, the decode error naming the frame type, and the framing.
// Internal to transport/: the wire format is frame.h's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "transport/frame.h"

namespace lazymig::transport::codec {

// Little-endian writer/reader over a byte buffer. The reader never reads past the end: every
// read reports failure instead, and the caller turns that into an error naming the field.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u16(std::uint16_t v) { put(v, 2); }
  void u32(std::uint32_t v) { put(v, 4); }
  void u64(std::uint64_t v) { put(v, 8); }
  void str16(std::string_view s) {
    u16(static_cast<std::uint16_t>(s.size()));
    out_.append(s);
  }

 private:
  void put(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string& out_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  bool u8(std::uint8_t& v) { return get(v, 1); }
  bool u16(std::uint16_t& v) { return get(v, 2); }
  bool u32(std::uint32_t& v) { return get(v, 4); }
  bool u64(std::uint64_t& v) { return get(v, 8); }
  bool str16(std::string& s) {
    std::uint16_t n;
    if (!u16(n) || remaining() < n) return false;
    s.assign(reinterpret_cast<const char*>(in_.data() + pos_), n);
    pos_ += n;
    return true;
  }
  std::size_t remaining() const { return in_.size() - pos_; }
  std::span<const std::byte> rest() const { return in_.subspan(pos_); }

 private:
  template <class T>
  bool get(T& v, std::size_t n) {
    if (remaining() < n) return false;
    std::uint64_t x = 0;
    for (std::size_t i = 0; i < n; ++i) {
      x |= static_cast<std::uint64_t>(std::to_integer<std::uint8_t>(in_[pos_ + i])) << (8 * i);
    }
    pos_ += n;
    v = static_cast<T>(x);
    return true;
  }
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
};

inline std::unexpected<Error> bad(FrameType type, const std::string& what) {
  return std::unexpected(
      Error::make(Errc::kProtocol, "frame decode", std::string(frameTypeName(type)) + ": " + what));
}

inline std::string frame(FrameType type, const std::string& payload) {
  std::string out(kHeaderSize, '\0');
  encodeHeader(
      type, static_cast<std::uint32_t>(payload.size()),
      std::span<std::byte, kHeaderSize>(reinterpret_cast<std::byte*>(out.data()), kHeaderSize));
  out += payload;
  return out;
}

}  // namespace lazymig::transport::codec

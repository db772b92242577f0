// Resume and StalePages: both carry a chunk of a page bitmap in one layout (docs/protocol.md).
#include "base/bitmap.h"
#include "transport/frame.h"
#include "transport/frame_codec.h"

namespace lazymig::transport {

using codec::bad;
using codec::frame;
using codec::Reader;
using codec::Writer;

namespace {

// Resume and StalePages share one layout: a chunk of the page bitmap starting on a word.
struct BitmapChunk {
  std::uint64_t first_page = 0;
  bool last = false;
  std::vector<std::uint64_t> words;
};

std::string encodeBitmapChunk(FrameType type, std::uint64_t first_page, bool last,
                              const std::vector<std::uint64_t>& words) {
  std::string p;
  Writer w(p);
  w.u64(first_page);
  w.u8(last ? 1 : 0);
  w.u32(static_cast<std::uint32_t>(words.size()));
  for (auto word : words) w.u64(word);
  return frame(type, p);
}

Result<BitmapChunk> decodeBitmapChunk(FrameType type, std::span<const std::byte> payload,
                                      const Layout& layout) {
  Reader r(payload);
  BitmapChunk m;
  std::uint8_t last = 0;
  std::uint32_t n = 0;
  if (!r.u64(m.first_page) || !r.u8(last) || !r.u32(n)) return bad(type, "truncated");
  if (last > 1) return bad(type, "last must be 0 or 1");
  m.last = last == 1;
  // Whole words of the page bitmap (base/bitmap.h's layout), so a frame starts on a word.
  if (m.first_page % Bitmap::kBitsPerWord != 0) {
    return bad(type, "first_page must be a multiple of 64");
  }
  const std::uint64_t words_total = Bitmap::wordsFor(layout.page_count);
  const std::uint64_t first_word = Bitmap::wordOf(m.first_page);
  if (n == 0 || m.first_page >= layout.page_count || n > words_total - first_word) {
    return bad(type, "bitmap words " + std::to_string(first_word) + "+" + std::to_string(n) +
                         " out of range (" + std::to_string(words_total) + " words)");
  }
  if (r.remaining() != std::size_t{n} * 8) return bad(type, "bitmap length mismatch");
  m.words.resize(n);
  for (auto& word : m.words) r.u64(word);
  return m;
}

}  // namespace

std::string encodeResume(const Resume& m) {
  return encodeBitmapChunk(FrameType::kResume, m.first_page, m.last, m.words);
}

Result<Resume> decodeResume(std::span<const std::byte> payload, const Layout& layout) {
  auto c = decodeBitmapChunk(FrameType::kResume, payload, layout);
  if (!c) return std::unexpected(c.error());
  return Resume{c->first_page, c->last, std::move(c->words)};
}

std::string encodeStalePages(const StalePages& m) {
  return encodeBitmapChunk(FrameType::kStalePages, m.first_page, m.last, m.words);
}

Result<StalePages> decodeStalePages(std::span<const std::byte> payload, const Layout& layout) {
  auto c = decodeBitmapChunk(FrameType::kStalePages, payload, layout);
  if (!c) return std::unexpected(c.error());
  return StalePages{c->first_page, c->last, std::move(c->words)};
}

}  // namespace lazymig::transport

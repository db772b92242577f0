// libFuzzer target: the VMM handshake parsers on arbitrary bytes (the JSON mappings a VMM
// sends with its uffd, the guest_memfd fault messages, the object stream that splits them).
// A hostile or broken VMM gets an error naming the field, never a crash or an overread.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "vmm/handshake.h"

using namespace lazymig::vmm;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  ParseLimits limits;
  limits.max_regions = 8;
  if (auto regions = parseMappings(text, limits)) {
    // What parses must re-encode to something that parses to the same regions.
    auto again = parseMappings(encodeMappings(*regions), limits);
    if (!again || again->size() != regions->size()) __builtin_trap();
  }
  (void)parseFaultRequest(text);
  (void)parseFaultReply(text);
  JsonObjectStream stream(4096);
  // Fed in two pieces, as a socket would deliver it.
  stream.feed(text.substr(0, size / 2));
  stream.feed(text.substr(size / 2));
  for (int i = 0; i < 64; ++i) {
    auto next = stream.next();
    if (!next || !next->has_value()) break;
  }
  return 0;
}

// libFuzzer target: every frame decoder on arbitrary bytes. Decoders must reject, never crash
// or read out of bounds (ASan), whatever a hostile peer sends.
#include <cstddef>
#include <cstdint>
#include <span>

#include "transport/frame.h"

using namespace lazymig::transport;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto bytes = std::span(reinterpret_cast<const std::byte*>(data), size);
  Limits limits;
  Layout layout{4096, 1 << 20};
  if (size >= kHeaderSize) {
    (void)decodeHeader(bytes.subspan<0, kHeaderSize>(), limits);
  }
  (void)decodeHello(bytes);
  (void)decodeHelloOk(bytes);
  (void)decodeError(bytes);
  (void)decodePageRequest(bytes, layout, limits);
  (void)decodePageData(bytes, layout);
  (void)decodeZeroRange(bytes, layout);
  (void)decodeResume(bytes, layout);
  (void)decodeStalePages(bytes, layout);
  (void)decodeBulkDone(bytes);
  (void)decodeComplete(bytes, layout);
  (void)decodePing(bytes);
  (void)decodeCompleteAck(bytes);
  (void)decodeServeTimes(bytes, layout);
  return 0;
}

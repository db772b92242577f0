// libFuzzer target: the config loader on arbitrary YAML. Every rejection must be an error
// value naming the key (never an exception escaping, a crash or a hang).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)lazymig::config::parseConfig(text, "fuzz.yaml");
  return 0;
}

#include "agent/core/test_points.h"

#include <signal.h>

#include <cstdlib>
#include <string>

namespace lazymig::agent {

void testPoint(std::string_view step, const log::Logger& log) {
  static const std::string wanted = [] {
    const char* v = std::getenv("LAZYMIG_TEST_STOP_AT");
    return std::string(v ? v : "");
  }();
  if (wanted.empty() || wanted != step) return;
  log.warn("stopping at a test point (LAZYMIG_TEST_STOP_AT)", {{"step", std::string(step)}});
  ::raise(SIGSTOP);
}

}  // namespace lazymig::agent

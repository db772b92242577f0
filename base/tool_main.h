// The body of a command-line tool's main().
#pragma once

#include <cstdio>
#include <exception>

namespace lazymig {

// Runs `body`. Errors are values on every path that can fail at run time, so an exception here
// is a library throwing where we did not expect it (a bug): it becomes one line on stderr and
// `status`, instead of std::terminate's abort.
template <class Body>
int runToolMain(const char* tool, int status, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: internal error: %s\n", tool, e.what());
    return status;
  }
}

}  // namespace lazymig

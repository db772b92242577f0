// Accesses to memory another process can shrink under the agent: a VMM's memfd (or hugetlbfs
// file) that it truncates after handing it over. The kernel answers an access to a mapped page
// past the file's new end with SIGBUS, which by default ends the agent and every migration in
// it. A guarded access turns that SIGBUS into an error for the one migration whose memory
// shrank.
//
// How: a process-wide SIGBUS handler (installed on first use) jumps back into the guarded call
// when the faulting thread is inside one and the address is in the range it guards; any other
// SIGBUS gets the default action (the process ends with a core, as a bug should). The guarded
// work is a plain copy or scan with nothing to unwind, so leaving it half done is safe.
#pragma once

#include <cstddef>

#include "base/error.h"

namespace lazymig::sys {

// Copies n bytes from src to dst; a kClosed error naming `what` if either side's pages are
// gone (the file behind them was truncated).
Status guardedCopy(void* dst, const void* src, std::size_t n, const char* what);

// Zeroes n bytes at dst; the same error if they are gone.
Status guardedZero(void* dst, std::size_t n, const char* what);

// Whether n bytes at src are all zero; the same error if they are gone.
Result<bool> guardedIsZero(const void* src, std::size_t n, const char* what);

}  // namespace lazymig::sys

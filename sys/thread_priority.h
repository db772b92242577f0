// The scheduling priority of one thread (Linux keeps a nice value per thread, not per
// process). The destination's fault thread runs at a lower nice than the agent's bulk work:
// on a crowded host a demand reply otherwise waits for the CPU behind bulk decryption and the
// vCPUs (docs/performance.md, "Where the fault tail goes").
#pragma once

#include "base/error.h"

namespace lazymig::sys {

// Sets the calling thread's nice value (-20..19). Lowering it below the thread's current value
// needs CAP_SYS_NICE or a large enough RLIMIT_NICE; the error names EPERM / EACCES then.
Status setThisThreadNice(int nice);
// The calling thread's nice value.
int thisThreadNice();
// Whether this process may lower a thread's nice to `nice`: CAP_SYS_NICE in its effective set,
// or RLIMIT_NICE allowing it. For the agent's info endpoint; the setting itself is what counts.
bool mayUseNice(int nice);

}  // namespace lazymig::sys

// lazymig-testvm source --live: the source VM keeps running while the agent copies its memory.
// The VMM arms write tracking over its guest memory, starts the vCPUs writing, hands the agent
// the memory, the write-protect uffd and its pagemap (vmm/source_handover.h), and pauses when
// the orchestrator says so (SIGUSR1).
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "sys/unix_socket.h"
#include "testvm/guest_memory.h"
#include "testvm/live_vcpus.h"

namespace lazymig::testvm {

struct LiveSourceOptions {
  LiveWriteOptions writes;
  std::string stamps_file;  // where the pause writes the stamps; empty: nowhere
};

// Now on the wall clock, in milliseconds: a source VM's pause and a destination VM's resume
// are stamped by two processes, and the demo's downtime is their difference.
inline double unixNowMs() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Runs the live source to its end and returns the exit code. Prints `ready` (plus "live":
// true) once the memory is handed over, a second JSON line when paused, and returns on SIGTERM
// or SIGINT (pausing first if it was still running).
// `connect` reaches the agent's handover socket; it is called once tracking is armed, so that a
// memory the kernel cannot track fails before the agent hears of it.
int runLiveSource(const GuestMemory& memory,
                  const std::function<Result<sys::UnixSocket>()>& connect,
                  const LiveSourceOptions& options, nlohmann::ordered_json ready);

// The stamps file: {"stamps": [[page, generation], ...]}.
Status writeStampsFile(const std::string& path, const LiveWrites& writes);
Result<std::map<std::uint64_t, std::uint64_t>> readStampsFile(const std::string& path);

}  // namespace lazymig::testvm

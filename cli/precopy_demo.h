// Pre-copy in the demo (docs/precopy.md): the source test VM keeps running, its vCPUs writing,
// while the source agent copies its memory in rounds; the demo then does what an orchestrator
// does -- waits for `ready_to_pause`, pauses the VM, tells the source agent (`POST .../paused`)
// and only then starts the destination VM, which verifies every page with the source's stamps.
// `lazymig demo --precopy` and tests/e2e/precopy_test.cc both go through here.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "cli/demo.h"

namespace lazymig::cli {

// The memory kinds a live source VM of the demo hands over with pre-copy (anon runs its source
// VM on a memfd: a VMM that supports pre-copy hands its memory over as a file descriptor).
inline constexpr const char* kDemoPrecopyMemoryKinds = "anon, memfd, memfd-minor";

// `--precopy` takes the spec key's own values (off, auto, rounds N with N from 1 to 1000) and
// `--precopy-deadline-ms` a positive number; errors name the flag.
Status checkDemoPrecopy(const DemoOptions& o);
inline bool demoPrecopy(const DemoOptions& o) { return o.precopy != "off"; }
// The source test VM's memory kind: `o.memory`, except that a live anon source runs on a memfd.
std::string demoSourceMemory(const DemoOptions& o);
// The spec keys both migrations get (`precopy`, `precopy_deadline_ms`); none without pre-copy.
nlohmann::json demoPrecopySpec(const DemoOptions& o);
// `lazymig-testvm source` arguments after the handover socket: running live (vCPUs writing,
// stamps into `stamps_path`) with pre-copy, else paused and holding its memory.
std::vector<std::string> liveSourceArgs(const DemoOptions& o, const std::string& stamps_path);

// The orchestrator's part, between createMigrations and startDestinationVm. Waits until the
// source agent says `ready_to_pause` (the rounds are done) ...
Status waitReadyToPause(DemoRun& run);
// ... then pauses the source VM (SIGUSR1), waits for it to say it paused and POSTs `paused`.
Status pauseSourceAndSwitch(DemoRun& run);
// Both, in order (what `lazymig demo --precopy` does).
Status switchLiveSource(DemoRun& run);

// The report's keys for pre-copy: `precopy` {mode, rounds, pages_per_round, switch_reason,
// stale_pages, ...}, `downtime_ms` (the source VM's pause to the destination VM's resume, from
// the two VMs' own stamps) and `demand_faults_after_switch`. `source`, `destination`: the
// agents' migration objects; `vm`: the destination VM's result; `source_vm_output`: its stdout.
nlohmann::json precopyReportJson(const DemoOptions& o, const Result<nlohmann::json>& source,
                                 const nlohmann::json& destination, const nlohmann::json& vm,
                                 const std::string& source_vm_output);
// The summary's pre-copy and downtime lines (stdout).
void printPrecopySummary(const nlohmann::json& report);

}  // namespace lazymig::cli

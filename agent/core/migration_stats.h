// Counters of one migration, written by its loop threads and read by the control API.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "agent/core/slowest_faults.h"
#include "base/latency_histogram.h"
#include "metrics/metrics.h"

namespace lazymig::agent {

struct MigrationStats {
  // Destination: pages by how they arrived. demand + bulk + zero + removed = pages done.
  std::atomic<std::uint64_t> demand_faults{0};  // uffd page faults read
  std::atomic<std::uint64_t> demand_pages{0};   // non-zero pages installed from urgent replies
  std::atomic<std::uint64_t> bulk_pages{0};     // non-zero pages installed from the bulk stream
  std::atomic<std::uint64_t> zero_pages{0};     // pages installed from a zero marker
  std::atomic<std::uint64_t> removed_pages{0};  // discarded by the guest (balloon) before arrival
  std::atomic<std::uint64_t> eexist_races{0};   // installs that found the page present
  // Bytes on the wire, both channels together (frame headers included)...
  std::atomic<std::uint64_t> bytes_received{0};
  std::atomic<std::uint64_t> bytes_sent{0};
  // ... and by channel, then direction (metrics::Channel, metrics::Direction).
  std::atomic<std::uint64_t> wire_bytes[2][2]{};
  std::atomic<std::uint64_t> reconnects{0};
  // Source: pages asked for on the urgent channel are counted in demand_faults; pages served:
  std::atomic<std::uint64_t> served_demand_pages{0};
  std::atomic<std::uint64_t> served_bulk_pages{0};
  std::atomic<std::uint64_t> served_zero_pages{0};
  LatencyHistogram fault_latency;  // from reading the fault to the install that wakes it
  // Destination: demand faults served over the network whose source reported its own times
  // (ServeTimes), split by phase (metrics::FaultPhase order), and those faults' whole latency:
  // each fault's phases add up to it, so the phase sums add up to its sum.
  std::array<LatencyHistogram, metrics::kFaultPhases> fault_phases;
  LatencyHistogram fault_phases_total;
  // The part of each of those faults' source_wait that the source measured itself (the rest is
  // the round trip nobody saw: socket queues, threads waiting for a CPU).
  LatencyHistogram fault_source_wait_seen;
  SlowestFaults slowest_faults;  // the tail, one fault at a time
};

}  // namespace lazymig::agent

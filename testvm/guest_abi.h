// What the VMM and the guest program (testvm/guest_program.S) agree on: the parameter block
// each vCPU's program reads at start (its address in RDI) and the ports it writes. The offsets
// and port numbers are repeated as .set constants in guest_program.S; static_asserts here and
// the guest's own checks of every page keep the two in step.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lazymig::testvm {

// The guest's parameter block, one per vCPU, in the control memslot. Page numbers are 4 KiB
// guest pages counted from mem_base.
struct GuestParams {
  std::uint64_t mem_base;        // guest physical address of guest page 0
  std::uint64_t pages;           // guest pages
  std::uint64_t pattern;         // 0 sequential, 1 random, 2 hot, 3 write (AccessPattern)
  std::uint64_t accesses;        // page visits this vCPU makes
  std::uint64_t vcpu;            // this vCPU's index
  std::uint64_t vcpus;           // how many vCPUs run
  std::uint64_t seed;            // Pattern::seed
  std::uint64_t zero_threshold;  // a page is all zeros when mix64(seed ^ mix64(page)) % 1e6 < this
  std::uint64_t slice_start;     // sequential: this vCPU's slice of guest pages
  std::uint64_t slice_len;
  std::uint64_t hot_start;  // hot: the hot tenth of guest memory
  std::uint64_t hot_count;
  std::uint64_t read_limit;   // reads stay below this page (the balloon owns the rest)
  std::uint64_t write_limit;  // writes stay below this page
  std::uint64_t bitmap;       // guest physical address of the userfault bitmap; 0: none
  std::uint64_t latency_log;  // guest physical address of accesses x u64 TSC ticks
  std::uint64_t random_state;
  std::uint64_t progress_every;  // accesses between progress reports
  std::uint64_t seed_times_31;
  std::uint64_t select;  // the guest's own: its page-selection routine
};
static_assert(offsetof(GuestParams, zero_threshold) == 56);
static_assert(offsetof(GuestParams, bitmap) == 112);
static_assert(offsetof(GuestParams, seed_times_31) == 144);
static_assert(offsetof(GuestParams, select) == 152);

// Ports the guest writes (`out port, eax`); the value is a guest page number unless noted.
enum GuestPort : std::uint16_t {
  kPortProgress = 0x10,   // value: accesses done so far
  kPortMismatch = 0x11,   // the page's checked word is not the pattern's
  kPortUserfault = 0x12,  // the page's userfault bit is set: fetch it before I touch it
  kPortStamp = 0x13,      // I stamped the page (generation: my stamps so far)
  kPortDone = 0x14,       // value: accesses done; the guest halts next
};

// The guest program's bytes, assembled and embedded at build time (guest_program_blob.S).
extern "C" const unsigned char lazymig_guest_program_start[];
extern "C" const unsigned char lazymig_guest_program_end[];

}  // namespace lazymig::testvm

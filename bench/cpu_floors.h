// The CPU a GiB costs at the least on this machine, per step the agents take with it: the
// floor that the agents' CPU seconds per GiB moved are read against (issue 14, item 3). Each
// figure is the measuring threads' own CPU clocks (CLOCK_THREAD_CPUTIME_ID, user + system)
// and the wall time it took.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace lazymig::bench {

struct CpuCost {
  std::string name;   // e.g. "aes_gcm"
  double cpu_s = 0;   // the measuring threads' CPU seconds, scaled to one GiB
  double wall_s = 0;  // wall seconds, scaled to one GiB
  // cpu_s split by the agent whose work it stands for: the source encrypts and sends, the
  // destination receives, decrypts and installs.
  double source_cpu_s = 0;
  double destination_cpu_s = 0;
  bool ran = false;  // false when the step could not be set up here
  std::string what;  // what was measured, for the table
};

// AES-256-GCM (the TLS 1.3 suite the transport negotiates) encrypt and then decrypt of
// `bytes`, in 16 KiB records with a fresh nonce and a 5-byte header as additional data each,
// as OpenSSL's TLS 1.3 record layer does it.
CpuCost aesGcmCost(std::size_t bytes);
// `bytes` sent over a loopback TCP connection and received, TCP_NODELAY as the transport sets
// it, sender and receiver on their own threads (both clocks summed).
CpuCost loopbackTcpCost(std::size_t bytes);
// UFFDIO_COPY of `bytes` into fresh anonymous memory in the bulk stream's 64-page runs.
CpuCost uffdCopyCost(std::size_t bytes);

// All three, and their sum as "total" (the floor of one agent pair moving a GiB).
std::vector<CpuCost> cpuFloorsPerGib(std::size_t bytes);

}  // namespace lazymig::bench

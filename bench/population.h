// Install throughput of each population path, through the agent's own PageInstaller, on
// memory of this process: the cost of how a page gets into the guest, without the network.
#pragma once

#include <string>
#include <vector>

namespace lazymig::bench {

struct PathRate {
  std::string name;  // e.g. "uffd_copy (anon)"
  double mib_s = 0;  // median of the runs
  bool ran = false;  // false when the memory could not be had (huge pages)
  std::string note;
};

std::vector<PathRate> populationPathRates(std::size_t bytes, int runs);

// How fast the source agent reads guest memory handed over as a memfd or a guest_memfd, in
// the bulk stream's 64-page runs through SourceMemory, with and without prefaulting each run.
std::vector<PathRate> sourceReadRates(std::size_t bytes, int runs);

}  // namespace lazymig::bench

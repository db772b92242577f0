// The "busy" condition of the floors: one spinning thread per core for as long as it lives.
// On these virtual machines a wake-up costs several times more when the woken CPU is idle
// (halted: the host must run the vCPU again) than when it is running something, so every
// floor is measured twice, idle and busy, and a migration's figures are read against the floor
// of matching conditions (faults while bulk runs keep the CPUs busy).
#pragma once

#include <atomic>
#include <thread>
#include <vector>

namespace lazymig::bench {

class BusyCpus {
 public:
  // The spinners run under SCHED_IDLE: they keep every core out of its idle state but yield
  // it at once to any other thread, so the measured threads lose no CPU time to them.
  BusyCpus();
  ~BusyCpus();
  BusyCpus(const BusyCpus&) = delete;
  BusyCpus& operator=(const BusyCpus&) = delete;

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> spinners_;
};

}  // namespace lazymig::bench

#include "bench/busy_cpus.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cstdio>

namespace lazymig::bench {

BusyCpus::BusyCpus() {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < cores; ++i) {
    spinners_.emplace_back([this] {
      sched_param none{};
      if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &none) != 0) {
        std::fprintf(stderr, "floors: a spinner could not take SCHED_IDLE; it spins at nice 0\n");
      }
      pthread_setname_np(pthread_self(), "floors-spin");
      while (!stop_.load(std::memory_order_relaxed)) {
      }
    });
  }
}

BusyCpus::~BusyCpus() {
  stop_ = true;
  for (auto& t : spinners_) t.join();
}

}  // namespace lazymig::bench

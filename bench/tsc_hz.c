// The host's TSC rate in Hz, measured against CLOCK_MONOTONIC over 200 ms, for
// bench/qemu_compare.sh: under TCG a guest's RDTSC reads the host's TSC, so the guest's stall
// ticks convert to microseconds at this rate. Built at bench time with the system's cc.
#include <stdio.h>
#include <time.h>
#include <x86intrin.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(void) {
  double t0 = now_s();
  unsigned long long c0 = __rdtsc();
  struct timespec pause = {0, 200 * 1000 * 1000};
  nanosleep(&pause, NULL);
  double t1 = now_s();
  unsigned long long c1 = __rdtsc();
  printf("%.0f\n", (double)(c1 - c0) / (t1 - t0));
  return 0;
}

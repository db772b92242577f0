#include "agent/core/slowest_faults.h"

#include <gtest/gtest.h>

namespace lazymig::agent {
namespace {

using namespace std::chrono_literals;

// The tail, one fault at a time: the slowest kept, slowest first, whatever order they came in.
TEST(SlowestFaults, KeepsTheSlowestFaultsSlowestFirst) {
  SlowestFaults slowest;
  for (int i : {5, 40, 1, 33, 7, 12, 90, 2, 61, 3, 18, 25}) {
    slowest.offer({std::chrono::microseconds(i), 0us, 0us, 0us, 0us, 1us});
  }
  auto kept = slowest.slowestFirst();
  ASSERT_EQ(kept.size(), SlowestFaults::kKept);
  std::vector<std::int64_t> totals;
  for (const auto& f : kept) {
    totals.push_back(std::chrono::duration_cast<std::chrono::microseconds>(totalOf(f)).count());
  }
  EXPECT_EQ(totals, (std::vector<std::int64_t>{91, 62, 41, 34, 26, 19, 13, 8}));
}

// A fault no slower than the fastest kept one, once the list is full, changes nothing.
TEST(SlowestFaults, AFaultFasterThanEveryKeptOneIsNotKept) {
  SlowestFaults slowest;
  for (std::size_t i = 0; i < SlowestFaults::kKept; ++i)
    slowest.offer({100us, 0us, 0us, 0us, 0us, 0us});
  slowest.offer({100us, 0us, 0us, 0us, 0us, 0us});
  slowest.offer({3us, 0us, 0us, 0us, 0us, 0us});
  for (const auto& f : slowest.slowestFirst()) EXPECT_EQ(totalOf(f), 100us);
}

}  // namespace
}  // namespace lazymig::agent

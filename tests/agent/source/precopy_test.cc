// Pre-copy rounds on real memory tracked by a real async write-protect uffd and PAGEMAP_SCAN,
// with a guest writer racing every round, and the switch decision on measured rounds.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include "agent/core/precopy_policy.h"
#include "agent/source/precopy_rounds.h"
#include "sys/mapping.h"

namespace lazymig::agent {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
constexpr std::uint64_t kPage = 4096;

std::string errorOf(std::string_view text, milliseconds deadline = seconds(60)) {
  auto p = parsePrecopyPolicy(text, deadline);
  EXPECT_FALSE(p) << text;
  return p ? "" : p.error().message();
}

TEST(PrecopyPolicy, ParsesTheThreeModesAndNamesWhatIsWrong) {
  EXPECT_EQ(parsePrecopyPolicy("off", seconds(1))->mode, PrecopyPolicy::Mode::kOff);
  EXPECT_EQ(parsePrecopyPolicy("auto", seconds(1))->mode, PrecopyPolicy::Mode::kAuto);
  auto rounds = parsePrecopyPolicy("rounds 3", seconds(5));
  ASSERT_TRUE(rounds);
  EXPECT_EQ(rounds->mode, PrecopyPolicy::Mode::kRounds);
  EXPECT_EQ(rounds->rounds, 3u);
  EXPECT_EQ(rounds->deadline, seconds(5));
  EXPECT_NE(errorOf("sometimes").find("precopy: 'sometimes': unknown mode"), std::string::npos);
  EXPECT_NE(errorOf("rounds 0").find("from 1 to 1000"), std::string::npos);
  EXPECT_NE(errorOf("rounds x").find("whole number"), std::string::npos);
  EXPECT_NE(errorOf("rounds 3", milliseconds(0)).find("deadline"), std::string::npos);
}

std::vector<PrecopyRound> rounds(std::initializer_list<std::uint64_t> pages) {
  std::vector<PrecopyRound> out;
  for (auto n : pages) out.push_back({static_cast<unsigned>(out.size() + 1), n, {}});
  return out;
}

TEST(PrecopySwitch, AutoSwitchesOnFewPagesOrRoundsThatStopShrinking) {
  PrecopyPolicy p = *parsePrecopyPolicy("auto", seconds(60));
  p.few_pages = 100;
  const auto t = seconds(1);
  EXPECT_EQ(decideSwitch(p, rounds({50}), t), std::nullopt) << "round 1 says nothing yet";
  EXPECT_EQ(decideSwitch(p, rounds({100000, 90}), t), SwitchReason::kFewPagesLeft);
  EXPECT_EQ(decideSwitch(p, rounds({100000, 5000, 3000}), t), std::nullopt);
  EXPECT_EQ(decideSwitch(p, rounds({100000, 5000, 3000, 2000}), t), std::nullopt);
  EXPECT_EQ(decideSwitch(p, rounds({100000, 5000, 4900, 4800}), t), SwitchReason::kNotShrinking);
  EXPECT_EQ(decideSwitch(p, rounds({100000, 5000, 3000}), seconds(60)), SwitchReason::kDeadline);
  p.max_rounds = 3;
  EXPECT_EQ(decideSwitch(p, rounds({100000, 5000, 3000}), t), SwitchReason::kRoundsDone);
}

TEST(PrecopySwitch, RoundsNRunsExactlyNUnlessTheDeadlineComesFirst) {
  PrecopyPolicy p = *parsePrecopyPolicy("rounds 3", seconds(10));
  EXPECT_EQ(decideSwitch(p, rounds({100, 1}), seconds(1)), std::nullopt);
  EXPECT_EQ(decideSwitch(p, rounds({100, 1, 1}), seconds(1)), SwitchReason::kRoundsDone);
  EXPECT_EQ(decideSwitch(p, rounds({100}), seconds(10)), SwitchReason::kDeadline);
  EXPECT_EQ(decideSwitch(*parsePrecopyPolicy("off", seconds(1)), {}, {}),
            SwitchReason::kRoundsDone);
}

// Guest memory in two regions at unrelated host addresses, as a VMM lays it out.
struct Guest {
  static constexpr std::uint64_t kRegionPages = 96;
  sys::Mapping regions[2];
  std::vector<vmm::GuestRegionMapping> mappings;

  Guest() {
    for (int i = 0; i < 2; ++i) {
      regions[i] = std::move(*sys::Mapping::anonymous(Bytes{kRegionPages * kPage}));
      std::fill(regions[i].bytes().begin(), regions[i].bytes().end(), std::byte{1});
      vmm::GuestRegionMapping m;
      m.base_host_virt_addr = regions[i].address().value;
      m.size = kRegionPages * kPage;
      m.offset = i * kRegionPages * kPage;
      mappings.push_back(m);
    }
  }
  std::uint64_t pages() const { return 2 * kRegionPages; }
  std::atomic_ref<std::uint64_t> word(std::uint64_t page) const {
    auto* at = regions[page / kRegionPages].data() + (page % kRegionPages) * kPage;
    return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(at));
  }
  sys::WriteTracker track() const {
    std::vector<sys::TrackedRange> ranges;
    for (const auto& r : regions) ranges.push_back({r.address(), r.size()});
    auto t = sys::WriteTracker::trackOwnMemory(std::move(ranges), Bytes{kPage});
    EXPECT_TRUE(t) << t.error().message();
    return std::move(*t);
  }
};

// The destination's copy: each round's pages as read from the running guest.
void send(const Guest& guest, const std::vector<GuestPageRun>& runs,
          std::vector<std::uint64_t>& destination) {
  for (const auto& run : runs)
    for (std::uint64_t p = run.first; p < run.first + run.count; ++p)
      destination[p] = guest.word(p).load();
}

// The invariant: after the pause, every page whose copy at the destination is older than the
// paused memory is among the stale pages -- none would be installed from the old copy.
TEST(PrecopyRounds, EveryPageWrittenAfterItWasSentIsStaleOrResent) {
  Guest guest;
  PrecopyPolicy policy = *parsePrecopyPolicy("rounds 40", seconds(60));
  PrecopyRounds precopy(guest.track(), guest.mappings, kPage, policy);
  std::atomic<bool> paused{false};
  std::atomic<std::uint64_t> writes{0};
  std::thread vcpu([&] {
    std::mt19937_64 rng(19);
    for (std::uint64_t value = 2; !paused.load(); ++value) {
      // Mostly a hot set that straddles the regions' border, sometimes anywhere.
      std::uint64_t page = rng() % 4 ? Guest::kRegionPages - 8 + rng() % 16 : rng() % guest.pages();
      guest.word(page).store(value);
      writes.fetch_add(1);
    }
  });
  std::vector<std::uint64_t> destination(guest.pages());
  std::optional<SwitchReason> reason;
  while (!reason) {
    auto runs = precopy.beginRound();
    ASSERT_TRUE(runs) << runs.error().message();
    send(guest, *runs, destination);
    // Rounds interleave with the guest's writes: each waits for a few before it ends.
    const auto seen = writes.load();
    while (writes.load() < seen + 50) std::this_thread::yield();
    reason = precopy.endRound();
  }
  EXPECT_EQ(*reason, SwitchReason::kRoundsDone);
  paused = true;  // the orchestrator pauses the source VM
  vcpu.join();
  auto stale = precopy.stalePagesAfterPause();
  ASSERT_TRUE(stale) << stale.error().message();
  std::vector<bool> is_stale(guest.pages());
  for (const auto& run : *stale)
    for (std::uint64_t p = run.first; p < run.first + run.count; ++p) is_stale[p] = true;
  std::uint64_t older_not_stale = 0, caught = 0;
  for (std::uint64_t p = 0; p < guest.pages(); ++p) {
    older_not_stale += destination[p] != guest.word(p).load() && !is_stale[p];
  }
  for (const auto& r : precopy.rounds()) caught += r.number > 1 ? r.pages : 0;
  EXPECT_EQ(older_not_stale, 0u) << "pages the destination would install from an old copy";
  EXPECT_GT(caught, 0u) << "no round caught a write: the race was not exercised";
  ASSERT_EQ(precopy.rounds().size(), 40u);
  EXPECT_EQ(precopy.rounds().front().pages, guest.pages());
}

// A guest with a small hot set: the rounds shrink to it and auto switches on few pages.
TEST(PrecopyRounds, AutoSwitchesOnceOnlyTheHotSetIsLeft) {
  Guest guest;
  PrecopyPolicy policy = *parsePrecopyPolicy("auto", seconds(60));
  policy.few_pages = 16;
  PrecopyRounds precopy(guest.track(), guest.mappings, kPage, policy);
  std::vector<std::uint64_t> destination(guest.pages());
  std::optional<SwitchReason> reason;
  for (std::uint64_t round = 1; !reason; ++round) {
    auto runs = precopy.beginRound();
    ASSERT_TRUE(runs) << runs.error().message();
    send(guest, *runs, destination);
    for (std::uint64_t p = 0; p < (round == 1 ? 60u : 10u); ++p) guest.word(p * 3).store(round);
    reason = precopy.endRound();
  }
  EXPECT_EQ(*reason, SwitchReason::kFewPagesLeft);
  ASSERT_EQ(precopy.rounds().size(), 3u);
  EXPECT_EQ(precopy.rounds()[1].pages, 60u);
  EXPECT_EQ(precopy.rounds()[2].pages, 10u);
  auto stale = precopy.stalePagesAfterPause();
  ASSERT_TRUE(stale);
  std::uint64_t n = 0;
  for (const auto& run : *stale) n += run.count;
  EXPECT_EQ(n, 10u) << "the last round's writes";
}

}  // namespace
}  // namespace lazymig::agent

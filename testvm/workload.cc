#include "testvm/workload.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

namespace lazymig::testvm {

using Clock = std::chrono::steady_clock;

namespace {
// vCPUs share guest memory and race on it as a real guest's do; word-sized relaxed atomics
// keep that defined (and TSan quiet) without ordering anything the kernel does not.
std::atomic_ref<std::uint64_t> guestWord(std::byte* at) {
  return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(at));
}
}  // namespace

void writeStamp(const GuestMemory& mem, std::uint64_t page, std::uint64_t generation) {
  std::byte stamp[Stamp::kBytes];
  Stamp::fill(page, generation, stamp);
  std::byte* at = mem.page(page) + Stamp::offsetIn(page);
  for (std::size_t w = 0; w < Stamp::kBytes; w += 8) {
    std::uint64_t word;
    std::memcpy(&word, stamp + w, 8);
    guestWord(at + w).store(word, std::memory_order_relaxed);
  }
}

std::uint64_t hotSetStart(std::uint64_t pages, std::uint64_t seed) {
  return mix64(seed) % (pages - hotSetPages(pages) + 1);
}

Result<AccessPattern> parseAccessPattern(const std::string& name) {
  if (name == "sequential") return AccessPattern::kSequential;
  if (name == "random") return AccessPattern::kRandom;
  if (name == "hot") return AccessPattern::kHot;
  if (name == "write") return AccessPattern::kWrite;
  return fail(Errc::kInvalidArgument, "--pattern",
              "must be sequential, random, hot or write, got '" + name + "'");
}

namespace {

struct VcpuResult {
  std::vector<std::uint64_t> latencies;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> stamps;
};

void runVcpu(const GuestMemory& mem, const WorkloadOptions& o, unsigned id,
             std::uint64_t write_limit, std::atomic<std::uint64_t>& progress, VcpuResult& out) {
  const std::uint64_t pages = mem.pageCount();
  std::mt19937_64 rng(o.seed * 1000 + id);
  const std::uint64_t slice = std::max<std::uint64_t>(1, pages / o.vcpus);
  const std::uint64_t slice_start = std::min(pages - 1, id * slice);
  const std::uint64_t hot_count = hotSetPages(pages);
  const std::uint64_t hot_start = hotSetStart(pages, o.seed);
  out.latencies.reserve(o.accesses);
  std::uint64_t generation = 0;
  for (std::uint64_t i = 0; i < o.accesses; ++i) {
    std::uint64_t page = 0;
    switch (o.pattern) {
      case AccessPattern::kSequential:
        page = slice_start + (i % slice);
        break;
      case AccessPattern::kRandom:
      case AccessPattern::kWrite:
        page = rng() % pages;
        break;
      case AccessPattern::kHot:
        page = rng() % 10 != 0 ? hot_start + rng() % hot_count : rng() % pages;
        break;
    }
    page = std::min(page, pages - 1);
    bool write = o.pattern == AccessPattern::kWrite && i % 2 == 1 && o.vcpus > 0;
    if (write) {
      // Each vCPU writes only its own pages, so the last stamp per page is well defined.
      page = page - page % o.vcpus + id;
      if (page >= write_limit) page = id < write_limit ? id : 0;
      write = page % o.vcpus == id && page < write_limit;
    }
    std::byte* p = mem.page(page);
    auto t0 = Clock::now();
    if (o.before_access) o.before_access(id, page);
    if (write) {
      writeStamp(mem, page, ++generation);
      out.stamps.emplace_back(page, generation);
    } else {
      volatile std::uint64_t sink =
          guestWord(p + 8 * (rng() % 512)).load(std::memory_order_relaxed);
      (void)sink;
    }
    out.latencies.push_back(static_cast<std::uint64_t>((Clock::now() - t0).count()));
    progress.fetch_add(1, std::memory_order_relaxed);
  }
}

}  // namespace

void runBalloon(const GuestMemory& mem, const WorkloadOptions& o,
                const std::atomic<std::uint64_t>& progress, std::vector<bool>& ballooned) {
  const std::uint64_t pages = mem.pageCount();
  const std::uint64_t first = pages * 7 / 8;
  const std::uint64_t ranges = (pages - first) / 16;
  if (ranges == 0) return;
  std::mt19937_64 rng(o.seed + 99);
  const std::uint64_t total = std::uint64_t{o.vcpus} * o.accesses;
  for (int i = 0; i < 32; ++i) {
    // Spread the discards over the workload, as a balloon inflates while the guest runs.
    while (progress.load(std::memory_order_relaxed) < total * static_cast<std::uint64_t>(i) / 33) {
      std::this_thread::yield();
    }
    std::uint64_t start = first + (rng() % ranges) * 16;
    if (!mem.sameRegion(start, 16)) continue;
    if (mem.discard(start, 16)) {
      for (std::uint64_t p = start; p < start + 16; ++p) ballooned[p] = true;
    }
  }
}

WorkloadResult runWorkload(const GuestMemory& mem, const WorkloadOptions& o) {
  WorkloadResult result;
  result.ballooned.assign(mem.pageCount(), false);
  const bool balloon = o.balloon && mem.kind() == MemoryKind::kAnonymous;
  const std::uint64_t write_limit = balloon ? mem.pageCount() * 7 / 8 : mem.pageCount();
  std::vector<VcpuResult> per(o.vcpus);
  std::atomic<std::uint64_t> progress{0};
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (unsigned v = 0; v < o.vcpus; ++v) {
    threads.emplace_back([&, v] { runVcpu(mem, o, v, write_limit, progress, per[v]); });
  }
  if (balloon) threads.emplace_back([&] { runBalloon(mem, o, progress, result.ballooned); });
  // The threads' progress over time, sampled as the KVM guest reports its own.
  std::atomic<bool> running{true};
  std::thread sampler([&] {
    const std::uint64_t total = std::uint64_t{o.vcpus} * o.accesses;
    for (std::uint64_t last = ~std::uint64_t{0}; running.load(std::memory_order_relaxed);) {
      std::uint64_t n = progress.load(std::memory_order_relaxed);
      if (n != last) result.progress.emplace_back((Clock::now() - t0).count(), n);
      last = n;
      if (n >= total) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  for (auto& t : threads) t.join();
  running = false;
  sampler.join();
  result.progress.emplace_back((Clock::now() - t0).count(), progress.load());
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  for (auto& v : per) {
    result.latencies_ns.insert(result.latencies_ns.end(), v.latencies.begin(), v.latencies.end());
    for (auto [page, gen] : v.stamps) result.stamps[page] = gen;
    result.writes += v.stamps.size();
  }
  result.accesses = result.latencies_ns.size();
  result.ballooned_pages = static_cast<std::uint64_t>(
      std::count(result.ballooned.begin(), result.ballooned.end(), true));
  return result;
}

VerifyResult verifyMemory(const GuestMemory& mem, const Pattern& pattern,
                          const WorkloadResult& work) {
  VerifyResult r;
  r.pages = mem.pageCount();
  alignas(8) std::byte expect[kPageSize];
  for (std::uint64_t p = 0; p < r.pages; ++p) {
    if (p < work.ballooned.size() && work.ballooned[p]) {
      std::memset(expect, 0, kPageSize);
    } else {
      pattern.fillPage(p, expect);
    }
    if (auto it = work.stamps.find(p); it != work.stamps.end()) {
      Stamp::fill(p, it->second,
                  std::span<std::byte, Stamp::kBytes>(expect + Stamp::offsetIn(p), Stamp::kBytes));
    }
    const std::byte* got = mem.page(p);
    if (std::memcmp(got, expect, kPageSize) != 0) {
      ++r.mismatches;
      if (r.first_mismatches.size() < 8) {
        std::size_t off = 0;
        while (off < kPageSize && got[off] == expect[off]) ++off;
        r.first_mismatches.emplace_back(p, off);
      }
    }
  }
  return r;
}

}  // namespace lazymig::testvm

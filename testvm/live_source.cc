#include "testvm/live_source.h"

#include <fcntl.h>
#include <signal.h>

#include <cmath>
#include <cstdio>

#include "base/strict_json.h"
#include "sys/memory_fd.h"
#include "sys/write_tracker.h"
#include "vmm/handshake.h"

namespace lazymig::testvm {
namespace {

void printLine(const nlohmann::ordered_json& line) {
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
}

}  // namespace

int runLiveSource(const GuestMemory& memory,
                  const std::function<Result<sys::UnixSocket>()>& connect,
                  const LiveSourceOptions& options, nlohmann::ordered_json ready) {
  // Blocked before the vCPU threads start, so that they inherit it and only sigwait sees them.
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGUSR1, SIGTERM, SIGINT}) sigaddset(&signals, sig);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto regions = memory.mappings();
  std::vector<sys::TrackedRange> ranges;
  for (auto& r : regions) {
    ranges.push_back({HostAddr{r.base_host_virt_addr}, Bytes{r.size}});
    r.gpa_start.reset();
    r.is_guest_memfd = false;
  }
  auto tracker = sys::WriteTracker::trackOwnMemory(std::move(ranges), Bytes{memory.pageSize()});
  if (!tracker) {
    std::fprintf(stderr, "lazymig-testvm: write tracking for a live source: %s\n",
                 tracker.error().message().c_str());
    return 2;
  }
  auto handover = connect();
  if (!handover) {
    std::fprintf(stderr, "lazymig-testvm: handover: %s\n", handover.error().message().c_str());
    return 2;
  }
  LiveVcpus vcpus(memory, options.writes);
  int fds[] = {memory.memfd().get(), tracker->uffd().pollFd(), tracker->pagemap().get()};
  if (auto ok = vmm::sendHandshake(*handover, regions, fds); !ok) {
    std::fprintf(stderr, "lazymig-testvm: handover: %s\n", ok.error().message().c_str());
    return 2;
  }
  ready["live"] = true;
  ready["live_vcpus"] = std::max(1u, options.writes.vcpus);
  printLine(ready);

  int sig = 0;
  sigwait(&signals, &sig);
  const auto pause_start = std::chrono::steady_clock::now();
  // The pause as the orchestrator sees it, on the clock the destination VM stamps its resume
  // with (the demo's downtime is the difference).
  const double paused_unix_ms = unixNowMs();
  LiveWrites writes = vcpus.pause();
  const double pause_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - pause_start)
          .count();
  if (!options.stamps_file.empty()) {
    if (auto ok = writeStampsFile(options.stamps_file, writes); !ok) {
      std::fprintf(stderr, "lazymig-testvm: %s\n", ok.error().message().c_str());
      return 2;
    }
  }
  printLine({{"role", "source"},
             {"paused", true},
             {"live_writes", writes.writes},
             {"stamped_pages", writes.stamps.size()},
             {"live_seconds", std::round(writes.seconds * 1000) / 1000},
             {"pause_ms", std::round(pause_ms * 1000) / 1000},
             {"paused_unix_ms", paused_unix_ms}});
  // A paused VM keeps its memory (and the tracking) until the orchestrator ends it.
  while (sig == SIGUSR1) sigwait(&signals, &sig);
  return 0;
}

Status writeStampsFile(const std::string& path, const LiveWrites& writes) {
  nlohmann::json stamps = nlohmann::json::array();
  for (auto [page, generation] : writes.stamps) stamps.push_back({page, generation});
  const std::string text = nlohmann::json{{"stamps", stamps}}.dump();
  auto fd = sys::openFile(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (!fd) return std::unexpected(fd.error());
  return sys::pwriteAll(fd->get(), text.data(), text.size(), 0);
}

Result<std::map<std::uint64_t, std::uint64_t>> readStampsFile(const std::string& path) {
  auto fd = sys::openFile(path, O_RDONLY | O_CLOEXEC);
  if (!fd) return std::unexpected(fd.error());
  auto size = sys::fileSize(fd->get());
  if (!size) return std::unexpected(size.error());
  std::string text(size->value, '\0');
  if (auto ok = sys::preadAll(fd->get(), text.data(), text.size(), 0); !ok) {
    return std::unexpected(ok.error());
  }
  auto doc = parseStrictJson(text, path);
  if (!doc) return std::unexpected(doc.error());
  auto bad = [&](const std::string& why) {
    return fail(Errc::kInvalidArgument, "stamps file", path + ": " + why);
  };
  if (!doc->is_object() || !doc->contains("stamps") || !(*doc)["stamps"].is_array()) {
    return bad("expected {\"stamps\": [[page, generation], ...]}");
  }
  std::map<std::uint64_t, std::uint64_t> out;
  for (const auto& entry : (*doc)["stamps"]) {
    if (!entry.is_array() || entry.size() != 2 || !entry[0].is_number_unsigned() ||
        !entry[1].is_number_unsigned()) {
      return bad("every stamp must be [page, generation] of non-negative integers");
    }
    out[entry[0].get<std::uint64_t>()] = entry[1].get<std::uint64_t>();
  }
  return out;
}

}  // namespace lazymig::testvm

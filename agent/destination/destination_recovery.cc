// Restart recovery of a destination migration (invariant 4): a new agent takes the uffd (and,
// in minor mode, the memory fd) back from the VMM, rebuilds the page map from its checkpoint
// and from what the kernel says is present, and wakes every vCPU the dead agent left waiting.
#include "agent/core/loop_sync.h"
#include "agent/destination/destination_migration.h"
#include "sys/process.h"

namespace lazymig::agent {

Result<std::vector<std::uint64_t>> DestinationMigration::recoverDoneBitmap(
    pid_t vmm_pid, const GuestLayout& layout) {
  // The checkpoint misses what was installed after its last batch; the kernel does not:
  // a page present (or swapped) in the VMM's mapping was installed, whatever RocksDB says.
  auto bitmap = ctx_.db.loadPageBitmap(id(), layout.pageCount());
  if (!bitmap) return std::unexpected(bitmap.error());
  std::uint64_t from_db = 0;
  for (auto w : *bitmap) from_db += static_cast<std::uint64_t>(__builtin_popcountll(w));
  for (const auto& r : layout.regions()) {
    auto present = sys::presentPages(vmm_pid, r.host_start, r.pages, layout.pageSize());
    if (!present) return std::unexpected(present.error());
    for (std::uint64_t i = 0; i < r.pages; ++i) {
      if (((*present)[i / 64] >> (i % 64)) & 1) {
        std::uint64_t p = r.first_page + i;
        (*bitmap)[p / 64] |= std::uint64_t{1} << (p % 64);
      }
    }
  }
  std::uint64_t total = 0;
  for (auto w : *bitmap) total += static_cast<std::uint64_t>(__builtin_popcountll(w));
  log_.info("page map recovered",
            {{"from_checkpoint", from_db}, {"from_kernel", total - from_db}, {"done", total}});
  return bitmap;
}

Status DestinationMigration::resume(const nlohmann::json& runtime) {
  resumed_ = true;
  if (runtime.is_object() && runtime.value("every_page_installed", false)) {
    return resumeEnding(runtime);
  }
  if (!runtime.is_object() || !runtime.contains("vmm_pid") || !runtime.contains("regions")) {
    log_.info("resuming: no VMM had connected yet; listening again");
    return start();
  }
  auto pid = runtime["vmm_pid"].get<pid_t>();
  if (!sys::processAlive(pid)) {
    return fail(Errc::kPeerGone, "resume", "the VMM (pid " + std::to_string(pid) + ") has exited");
  }
  const std::string kind = runtime.value("handshake", "classic");
  if (kind == "guest_memfd") {
    // Its FaultRequests came over the handshake socket, which closed with the old agent, and
    // Firecracker does not connect again: vCPUs exiting on a set bit would wait forever.
    return fail(Errc::kUnsupported, "resume",
                "restart recovery is not possible for the guest_memfd handshake: the VMM's "
                "fault socket closed with the previous agent");
  }
  auto fds =
      sys::findFds(pid, [](const std::string& t) { return t == "anon_inode:[userfaultfd]"; });
  if (!fds) return std::unexpected(fds.error());
  if (fds->size() != 1) {
    return fail(Errc::kState, "resume",
                "the VMM (pid " + std::to_string(pid) + ") holds " + std::to_string(fds->size()) +
                    " userfaultfds; expected exactly one");
  }
  auto fd = sys::takeFd(pid, fds->front());
  if (!fd) return std::unexpected(fd.error());
  if (kind == "shared_minor") {
    auto memory = sys::takeFdByInode(pid, runtime.value("memory_dev", std::uint64_t{0}),
                                     runtime.value("memory_ino", std::uint64_t{0}));
    if (!memory) return std::unexpected(memory.error());
    vmm::Handshake h;
    h.kind = vmm::HandshakeKind::kSharedMinor;
    h.guest_memfd = std::move(*memory);
    auto rs = vmm::parseMappings(runtime["regions"].dump());
    if (!rs) return std::unexpected(rs.error());
    h.page_size = rs->front().page_size;
    for (const auto& r : *rs) h.total_bytes += r.size;
    auto choice = choosePopulation(h, kernelCapabilities());
    if (!choice) return std::unexpected(choice.error());
    kind_ = h.kind;
    population_ = std::move(*choice);
    if (auto ok = mapGuestMemory(h); !ok) return ok;
  }
  auto regions = vmm::parseMappings(runtime["regions"].dump());
  if (!regions) return std::unexpected(regions.error());
  auto layout = GuestLayout::fromMappings(*regions);
  if (!layout) return std::unexpected(layout.error());
  auto bitmap = recoverDoneBitmap(pid, *layout);
  if (!bitmap) return std::unexpected(bitmap.error());
  handshaken_ = true;
  auto uffd = sys::Uffd::adopt(std::move(*fd));
  if (!uffd) return std::unexpected(uffd.error());
  auto ok = adopt(std::move(*uffd), std::move(*regions), pid, std::move(*bitmap));
  if (!ok) return ok;
  // Faults the dead agent read were never answered: their vCPUs sleep until woken. Wake
  // every region; a vCPU whose page is still missing faults again, and this agent hears it.
  // (Pages a minor-mode agent wrote but had not yet mapped are not present in the VMM's page
  // table, so they count as missing and are written again: the guest never saw them.)
  runOnLoop(*urgent_loop_, [this] {
    for (const auto& r : regions_) {
      if (auto w = uffd_.wake(HostAddr{r.base_host_virt_addr}, Bytes{r.size}); !w) {
        log_.warn("waking the guest after recovery failed", {{"error", w.error().message()}});
      }
    }
  });
  return {};
}

}  // namespace lazymig::agent

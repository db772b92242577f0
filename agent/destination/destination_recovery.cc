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
  const std::uint64_t from_db = bitmap->count();
  for (const auto& r : layout.regions()) {
    auto present = sys::presentPages(vmm_pid, r.host_start, r.pages, layout.pageSize());
    if (!present) return std::unexpected(present.error());
    for (auto i = present->findNextSet(0); i < r.pages; i = present->findNextSet(i + 1))
      bitmap->set(r.first_page + i);
  }
  const std::uint64_t total = bitmap->count();
  log_.info("page map recovered",
            {{"from_checkpoint", from_db}, {"from_kernel", total - from_db}, {"done", total}});
  return std::move(*bitmap).takeWords();
}

Status DestinationMigration::resume(const RuntimeRecord& runtime) {
  resumed_ = true;
  if (runtime.every_page_installed) return resumeEnding(runtime);
  if (!runtime.vmm_pid) {
    log_.info("resuming: no VMM had connected yet; listening again");
    return start();
  }
  const pid_t pid = *runtime.vmm_pid;
  if (!sys::processAlive(pid)) {
    return fail(Errc::kPeerGone, "resume", "the VMM (pid " + std::to_string(pid) + ") has exited");
  }
  if (runtime.handshake == vmm::HandshakeKind::kGuestMemfd) {
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
  if (runtime.handshake == vmm::HandshakeKind::kSharedMinor) {
    if (!runtime.memory) {
      return fail(Errc::kState, "resume",
                  "the record of a shared_minor migration lacks the memory fd's identity");
    }
    auto memory = sys::takeFdByInode(pid, runtime.memory->dev, runtime.memory->ino);
    if (!memory) return std::unexpected(memory.error());
    vmm::Handshake h;
    h.kind = vmm::HandshakeKind::kSharedMinor;
    h.memory = std::move(*memory);
    h.page_size = runtime.regions.front().page_size;
    for (const auto& r : runtime.regions) h.total_bytes += r.size;
    auto choice = choosePopulation(h, kernelCapabilities());
    if (!choice) return std::unexpected(choice.error());
    kind_ = h.kind;
    population_ = std::move(*choice);
    if (auto ok = mapGuestMemory(h); !ok) return ok;
  }
  auto regions = runtime.regions;
  auto layout = GuestLayout::fromMappings(regions);
  if (!layout) return std::unexpected(layout.error());
  auto bitmap = recoverDoneBitmap(pid, *layout);
  if (!bitmap) return std::unexpected(bitmap.error());
  handshaken_ = true;
  auto uffd = sys::Uffd::adopt(std::move(*fd));
  if (!uffd) return std::unexpected(uffd.error());
  auto ok = adopt(std::move(*uffd), std::move(regions), pid, std::move(*bitmap));
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

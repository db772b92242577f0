// The destination role: takes the VMM's uffd, serves its faults from the source, installs
// the bulk stream, and finishes when every page is in and the source has acknowledged it
// (the ending handshake, docs/protocol.md): `completing` until the source's CompleteAck,
// across restarts of either agent, then `completed`.
//
// Threads: the VMM listener thread (handshake), the urgent loop (FaultService with the urgent
// link, completion) and the bulk loop (BulkReceiver with the bulk link, checkpoints).
// Page-map checkpoints also run at completion (urgent loop), at shutdown and from the
// agent's persistence retry; PageMapCheckpoint keeps them from overlapping.
#pragma once

#include <atomic>
#include <memory>
#include <optional>

#include "agent/core/migration.h"
#include "agent/core/migration_spec.h"
#include "agent/core/transfer_recorder.h"
#include "agent/core/vmm_listener.h"
#include "agent/destination/bulk_receiver.h"
#include "agent/destination/destination_context.h"
#include "agent/destination/fault_service.h"
#include "agent/destination/population/guest_layout.h"
#include "agent/destination/population/guest_memory_view.h"
#include "agent/destination/population/memory_capabilities.h"
#include "agent/destination/population/page_installer.h"
#include "agent/destination/population/precopy_staging.h"
#include "agent/destination/vmm_fault_channel.h"
#include "store/page_map.h"
#include "store/page_map_checkpoint.h"
#include "sys/uffd.h"

namespace lazymig::agent {

class DestinationMigration final : public Migration {
 public:
  DestinationMigration(DestinationSpec spec, AgentContext& ctx);
  ~DestinationMigration() override;

  Status start() override;
  Status resume(const RuntimeRecord& runtime) override;
  Status cancel(bool force) override;
  void shutdown() override;
  std::optional<std::string> degraded() const override;
  void retryPersistence() override;

 protected:
  void addDetails(nlohmann::json& out) const override;
  std::uint64_t pagesTotal() const override;
  std::uint64_t pagesDone() const override;
  std::uint64_t bytesMoved() const override;
  RuntimeRecord runtime() const override;

 private:
  Status onHandshake(vmm::Handshake handshake, const sys::PeerCredentials& peer,
                     sys::UnixSocket connection);
  // Builds the layout, page map and installer for a uffd and its regions; `restored` is
  // the done-bitmap a restarted agent recovered (empty on a first handshake).
  Status adopt(sys::Uffd uffd, std::vector<vmm::GuestRegionMapping> regions, pid_t vmm_pid,
               std::vector<std::uint64_t> restored);
  // The write paths' own view of the memory fd (and bitmap) the VMM handed over.
  Status mapGuestMemory(vmm::Handshake& handshake);
  Status startFaultChannel();  // urgent loop; guest_memfd handshake only
  Result<std::vector<std::uint64_t>> recoverDoneBitmap(pid_t vmm_pid, const GuestLayout& layout);
  // After a restart in `completing`: every page was installed, so neither the VMM nor its
  // uffd is needed any more; only the source has to hear it.
  Status resumeEnding(const RuntimeRecord& runtime);
  // Refuses a handshake whose regions do not add up to the memory the source serves.
  Status checkSourceLayout(const vmm::Handshake& handshake) const;
  Status startServing();
  // Pre-copy: the bulk loop and its link, at creation, before any VMM (docs/precopy.md).
  Status startPrecopyLink();
  // The bulk receiver's hooks (the same before and after the VMM's handshake).
  BulkReceiver::Hooks bulkHooks();
  // Pre-copy: a VMM whose regions are not the layout the staging holds is refused.
  Status checkStagingLayout(const vmm::Handshake& handshake) const;
  nlohmann::json precopyStatus() const;  // any thread
  // Where the source is, who it must be, and this migration's Hello (layout not yet set).
  SourceLinkParams linkParams() const;
  // FaultService's link, or after a restart in `completing` the ending's own.
  SourceLink* urgentLink();  // urgent loop
  void startEndingLink();    // urgent loop; restart in `completing` only
  void progressed();         // either loop
  void finish();             // urgent loop
  void sendComplete();       // urgent loop
  void acknowledged();       // urgent loop
  void gaveUp(transport::ChannelKind kind, const Error& why);  // either loop
  void endUnacknowledged(const std::string& why);
  void raiseFaultThreadPriority();  // urgent loop
  // How long a finished link keeps reading until the source closes it (SourceLink::finish);
  // the agent retires a finished migration only after it (Agent::scheduleRetire).
  std::chrono::milliseconds lingerTime() const;
  void scheduleCheckpoint();             // bulk loop
  void failMigration(const Error& why);  // any thread
  void stopEverything();

  DestinationSpec spec_;
  // This migration's stats_ and the agent's metrics, updated together (any thread).
  const TransferRecorder recorder_{stats_, ctx_.metrics};
  std::unique_ptr<VmmListener> listener_;
  std::atomic<bool> handshaken_{false};
  // Published (release) once layout_, pages_ and installer_ are built; readers on other
  // threads (the control API) acquire it before touching them.
  std::atomic<bool> ready_{false};

  // Set once by the handshake, read-only afterwards.
  sys::UnixSocket vmm_connection_;
  sys::Uffd uffd_;
  std::vector<vmm::GuestRegionMapping> regions_;
  vmm::HandshakeKind kind_ = vmm::HandshakeKind::kClassic;
  PopulationChoice population_;
  sys::UniqueFd memory_fd_;  // kSharedMinor / kGuestMemfd
  sys::UniqueFd bitmap_fd_;  // kGuestMemfd
  GuestMemoryView view_;
  std::optional<GuestLayout> layout_;
  std::unique_ptr<store::PageMap> pages_;
  std::unique_ptr<store::PageMapCheckpoint> checkpoint_;  // any thread
  std::unique_ptr<PageInstaller> installer_;

  std::unique_ptr<transport::EventLoop> urgent_loop_;
  std::unique_ptr<transport::EventLoop> bulk_loop_;
  // Pre-copy (spec `precopy` not off): what the source sent before its switch. Built at
  // creation, sized by the bulk loop from the source's HelloOk, read by the urgent loop (a
  // fault on a staged page after the switch) and the control loop (status).
  std::unique_ptr<PrecopyStaging> staging_;
  // Built by startServing; outlives faults_ and bulk_receiver_, which hold it.
  std::optional<DestinationContext> context_;
  std::unique_ptr<FaultService> faults_;         // urgent loop
  std::unique_ptr<VmmFaultChannel> vmm_faults_;  // urgent loop
  std::unique_ptr<SourceLink> ending_link_;      // urgent loop; restart in `completing` only
  std::unique_ptr<BulkReceiver> bulk_receiver_;  // bulk loop
  transport::Timer checkpoint_timer_;            // bulk loop

  std::atomic<bool> finishing_{false};  // every page installed
  // Persisted with the runtime from `completing` on: a restart resumes by telling the source.
  std::atomic<bool> every_page_installed_{false};
  std::atomic<bool> source_acknowledged_{false};
  std::atomic<bool> stopped_{false};
  std::atomic<std::uint64_t> restored_pages_{0};
  std::atomic<bool> resumed_{false};
  mutable std::mutex runtime_mu_;
  RuntimeRecord runtime_;  // vmm_pid and regions, for a restarted agent
  // The fault thread's nice value as set (migration.fault_thread_nice), and why not, if it
  // could not be: set on the urgent loop when serving starts, read by the status.
  std::atomic<int> fault_thread_nice_{0};
  std::string fault_thread_nice_error_;  // under runtime_mu_
};

}  // namespace lazymig::agent

// The source role: holds the paused guest's memory and serves it to the one destination
// allowed to have it -- demand pages on the urgent channel first, everything else on the
// bulk stream (BulkSender) -- until the destination confirms every page is installed
// (invariant 4: the memory is never released before that).
//
// Threads: start, resume, cancel and shutdown run on the agent's threads (control API,
// start-up, retirement); the memory handover arrives on the VMM listener's connection thread;
// toJson runs anywhere.
// What they share is atomic (ready_, released_, the shape) or under runtime_mu_. Channels
// are accepted on the agent's peer loop, which keeps the bulk stream; the urgent channel is
// moved to the migration's own urgent loop (transport::moveToLoop), so that a demand request
// never waits for a bulk batch or for a peer loop that lost its CPU (QEMU's postcopy-preempt
// idea; docs/performance.md). The methods marked "peer loop" or "urgent loop" run only there
// (asserted in debug builds) and own everything under "peer loop only" / "urgent loop only"
// below. The urgent loop never waits for the peer loop: what it tells the bulk stream (a page
// served on demand) is posted.
#pragma once

#include <chrono>
#include <memory>
#include <optional>

#include "agent/core/migration.h"
#include "agent/core/migration_spec.h"
#include "agent/core/transfer_recorder.h"
#include "agent/core/vmm_listener.h"
#include "agent/source/bulk_schedule.h"
#include "agent/source/bulk_sender.h"
#include "agent/source/hello_check.h"
#include "agent/source/parked_channels.h"
#include "agent/source/precopy_source.h"
#include "agent/source/source_memory.h"
#include "transport/connection.h"

namespace lazymig::agent {

class SourceMigration final : public Migration {
 public:
  SourceMigration(SourceSpec spec, AgentContext& ctx, transport::EventLoop& peer_loop);
  ~SourceMigration() override;

  Status start() override;
  Status resume(const RuntimeRecord& runtime) override;
  Status cancel(bool force) override;
  // Closes every channel on the peer loop and waits for it (runs at once on the peer loop).
  void shutdown() override;

  // Peer loop: a connection said Hello for this migration. Either the channel is accepted
  // (HelloOk sent, the migration owns the connection), or it waits for the memory handover
  // (an authorised destination that came first: answered the moment the memory arrives), or
  // an Error frame is sent, the connection closed and the refusal counted; the refusal is
  // returned.
  std::optional<HelloRefusal> attach(std::unique_ptr<transport::Connection> conn,
                                     const transport::Hello& hello);

  // The orchestrator paused the live source VM (POST .../paused; any thread but the peer
  // loop's): the final scan, the stale set to the destination, then post-copy with the hot set
  // first. An error (Errc::kState) when this is not a live pre-copy or it switched already.
  Status paused();

 protected:
  void addDetails(nlohmann::json& out) const override;
  std::uint64_t pagesTotal() const override;
  std::uint64_t pagesDone() const override;
  std::uint64_t bytesMoved() const override;
  RuntimeRecord runtime() const override;

 private:
  Status startUrgentLoop();
  void raiseUrgentThreadPriority();  // urgent loop
  Status useMemory(std::unique_ptr<SourceMemory> memory);
  Status listenForHandover();
  Status useHandover(vmm::Handshake h, const sys::PeerCredentials& peer);
  // On the handover thread, before ready_: what pre-copy this migration runs, if any.
  void preparePrecopy(sys::UniqueFd wp_uffd, sys::UniqueFd pagemap,
                      const std::vector<vmm::GuestRegionMapping>& regions, std::uint64_t page_size,
                      std::uint64_t page_count);
  Status switchToPostCopy();                                   // peer loop
  void holdRequests(const std::vector<std::uint64_t>& pages);  // urgent loop
  void serveHeldRequests();                                    // urgent loop
  std::string precopyNote() const;
  // Peer loop: the urgent channel, its Hello accepted, handed to the urgent loop, which sends
  // the HelloOk (`hello_ok`) and serves it from `memory`.
  void moveUrgent(std::unique_ptr<transport::Connection> conn, std::string hello_ok);
  void attachUrgent(std::unique_ptr<transport::Connection> conn,
                    std::shared_ptr<SourceMemory> memory);  // urgent loop
  void onUrgentFrame(const transport::FrameHeader& h,
                     std::span<const std::byte> payload);  // urgent loop
  // Urgent loop: one demand page's reply, and (protocol 1.2, when the request's arrival is
  // given and the destination asked) this side's durations for it.
  void serveDemandPage(std::uint64_t page,
                       std::optional<std::chrono::steady_clock::time_point> arrived);
  void dropUrgent();   // urgent loop
  void closeUrgent();  // urgent loop: the channel closed, its memory let go
  // Peer loop: pages the urgent loop served, which the bulk stream need not send; the pages
  // after them first.
  void demandServed(const std::vector<std::uint64_t>& pages);
  void completed(std::uint64_t pages_installed);  // urgent loop
  void attachParked();                            // peer loop, once the memory is here
  void releaseMemory();                           // peer loop
  // The one teardown of every channel, parked or attached, and of the bulk stream's timer.
  // Peer loop (it waits for the urgent loop to close its channel); or, from shutdown() once the
  // peer loop has stopped, the caller's thread (nothing runs on the loop any more).
  void closeChannels();

  SourceSpec spec_;
  transport::EventLoop& peer_loop_;
  TransferRecorder recorder_;
  std::unique_ptr<VmmListener> listener_;
  // Set once, before ready_. Queued page frames share it (sendWithBody), so the mapping
  // outlives a release while a closing connection still flushes them.
  std::shared_ptr<SourceMemory> memory_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> released_{false};
  // Copies of the memory's shape for readers on other threads (the control API).
  std::atomic<std::uint64_t> page_count_{0};
  std::atomic<std::uint64_t> page_size_{0};
  mutable std::mutex runtime_mu_;
  RuntimeRecord runtime_;     // the handing-over VMM's pid, regions and memory fd identity
  std::string precopy_note_;  // why no pre-copy runs (status), under runtime_mu_
  // Set once, before ready_ (a live handover, or pre-copy asked of a paused one).
  std::unique_ptr<PrecopySource> precopy_;
  bool live_ = false;  // set with precopy_: the handover was live
  // Urgent PageRequests wait until the switch (a live pre-copy only).
  std::atomic<bool> hold_urgent_{false};
  // The urgent channel's own thread: started by start() or resume(), before ready_; stopped by
  // shutdown().
  std::unique_ptr<transport::EventLoop> urgent_loop_;
  // Its nice value as set (migration.source_urgent_thread_nice), and why not, if it could not
  // be; known once `urgent_thread_set_`.
  std::atomic<int> urgent_thread_nice_{0};
  std::atomic<bool> urgent_thread_set_{false};
  std::string urgent_thread_error_;  // under runtime_mu_

  // Peer loop only.
  ParkedChannels parked_;
  std::optional<BulkSchedule> schedule_;
  BulkSender bulk_;

  // Urgent loop only.
  std::unique_ptr<transport::Connection> urgent_;
  // The memory the urgent channel serves: its own reference, so that the peer loop may let
  // memory_ go (after closing this channel) without pulling it from under a reply.
  std::shared_ptr<SourceMemory> urgent_memory_;
  bool serve_times_ = false;  // the urgent connection's destination asked for ServeTimes
  std::vector<std::uint64_t> held_pages_;  // requested before the switch
  // Set by closeUrgent (completion, shutdown): a channel still on its way here is closed
  // instead of served, so that none outlives the teardown (nor the loop, once it stops).
  bool urgent_closed_ = false;
};

}  // namespace lazymig::agent

// The source role: holds the paused guest's memory and serves it to the one destination
// allowed to have it -- demand pages on the urgent channel first, everything else on the
// bulk stream -- until the destination confirms every page is installed (invariant 4: the
// memory is never released before that).
//
// Connections live on the agent's peer loop; everything here but start/cancel/toJson runs
// there.
#pragma once

#include <memory>
#include <optional>

#include "agent/core/migration.h"
#include "agent/core/migration_spec.h"
#include "agent/core/peer_errors.h"
#include "agent/core/vmm_listener.h"
#include "agent/source/bulk_schedule.h"
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
  void shutdown() override;

  // Peer loop: a connection said Hello for this migration. Either the channel is accepted
  // (HelloOk sent, the migration owns the connection), or it waits for the memory handover
  // (an authorised destination that came first: answered the moment the memory arrives), or
  // an Error frame is sent and the connection closed; a refusal reason is returned for the
  // metrics.
  std::optional<std::string> attach(std::unique_ptr<transport::Connection> conn,
                                    const transport::Hello& hello);

 protected:
  void addDetails(nlohmann::json& out) const override;
  std::uint64_t pagesTotal() const override;
  std::uint64_t pagesDone() const override;
  std::uint64_t bytesMoved() const override;
  RuntimeRecord runtime() const override;

 private:
  Status useMemory(std::unique_ptr<SourceMemory> memory);
  Status listenForHandover();
  std::optional<std::string> checkHello(const transport::Hello& hello, PeerErrorCode& code,
                                        std::string& message,
                                        const transport::Connection& conn) const;
  void onUrgentFrame(const transport::FrameHeader& h, std::span<const std::byte> payload);
  void onBulkFrame(const transport::FrameHeader& h, std::span<const std::byte> payload);
  void servePage(std::uint64_t page);
  void pumpBulk();
  // Returns the bytes it queued on the wire.
  std::uint64_t sendRun(transport::Connection& conn, std::uint64_t first, std::uint64_t count,
                        std::atomic<std::uint64_t>& counter);
  void channelClosed(transport::ChannelKind kind, const Error& e);
  void completed(std::uint64_t pages_installed);
  void releaseMemory();  // peer loop
  void park(std::unique_ptr<transport::Connection> conn, const transport::Hello& hello);
  struct Parked;
  std::optional<Parked>& parked(transport::ChannelKind kind);
  void attachParked();  // peer loop, once the memory is here
  void closeParked();   // peer loop
  transport::Layout layout() const;

  SourceSpec spec_;
  transport::EventLoop& peer_loop_;
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
  RuntimeRecord runtime_;  // the handing-over VMM's pid, regions and memory fd identity

  // Peer loop only.
  std::unique_ptr<transport::Connection> urgent_;
  std::unique_ptr<transport::Connection> bulk_;
  // Authorised channels that said Hello before the memory was handed over, one per kind.
  // Answering them the moment it arrives spares the destination's first faults a reconnect
  // backoff (up to seconds) when the orchestrator resumes the VM while the handover runs.
  struct Parked {
    std::unique_ptr<transport::Connection> conn;
    transport::Hello hello;
  };
  std::optional<Parked> parked_urgent_;
  std::optional<Parked> parked_bulk_;
  std::optional<BulkSchedule> schedule_;
  std::vector<std::uint64_t> resume_bitmap_;
  bool resumed_ = false;
  bool bulk_done_sent_ = false;
  std::size_t bulk_window_bytes_ = 4 << 20;
  std::uint32_t bulk_batch_pages_ = 64;
  // Token bucket for bulk_rate_limit_mib_s (peer loop only).
  double bulk_rate_bytes_s_ = 0;
  double bulk_tokens_ = 0;
  std::chrono::steady_clock::time_point bulk_refill_{};
  transport::Timer bulk_timer_;
};

}  // namespace lazymig::agent

// The destination's end of the bulk stream: owns the bulk link to the source, tells the source
// what this side already has (Resume) and installs each batch in as few ioctls as the page map
// allows. Lives on the bulk loop thread. The counterpart of FaultService, which owns the
// urgent link.
//
// Pre-copy (docs/precopy.md): a destination whose spec has `precopy` on builds this at
// creation, before its VMM exists, with only a link (`LinkContext`) and a PrecopyStaging. Every
// page that arrives before the source's StalePages frame with `last` (the switch) is staged,
// never installed; StalePages drops the pages it names. Once both the switch and the VMM's
// handshake (attach) happened, the staged pages are installed in large runs, a step at a time
// between the frames that keep arriving, and later pages are installed as they come.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "agent/destination/destination_context.h"
#include "agent/destination/population/precopy_staging.h"
#include "transport/frame.h"

namespace lazymig::agent {

class BulkReceiver {
 public:
  struct Hooks {
    std::function<void()> progressed;  // pages became done (or were found present)
    std::function<void(const Error&)> fatal;
    // The bulk link is gone for good (give_up_after, or a refusal that will not change).
    std::function<void(const Error&)> gave_up = {};
  };
  // What the bulk link needs before the guest's memory is known.
  struct LinkContext {
    transport::EventLoop& bulk_loop;
    std::shared_ptr<transport::TlsContext> tls;
    // Bulk; page_size and memory_bytes 0 until the VMM describes the guest (the source's
    // HelloOk says its layout, which sizes the staging).
    SourceLinkParams link;
    TransferRecorder recorder;
    log::Logger log;
  };

  // The guest is known: pages are installed as they arrive, or staged until the switch when
  // `staging` is given (pre-copy, after a restart of this agent).
  BulkReceiver(const DestinationContext& ctx, Hooks hooks, PrecopyStaging* staging = nullptr);
  // Pre-copy before the VMM: every page is staged until attach().
  BulkReceiver(LinkContext link, PrecopyStaging& staging, Hooks hooks);
  BulkReceiver(const BulkReceiver&) = delete;
  BulkReceiver& operator=(const BulkReceiver&) = delete;

  // Every method runs on the bulk loop (asserted).
  // Connects the bulk link; the source streams once it has heard the Resume.
  void start();
  void stop();
  // The VMM's handshake gave the guest's memory: pages after the switch go into it from now
  // on, and the staged ones too once the switch has happened.
  void attach(const DestinationContext& ctx);
  // Every page is installed: read what the source still sends until it closes the link, or
  // `linger` passes (SourceLink::finish).
  void finish(std::chrono::milliseconds linger);
  // One frame from the bulk link (public for the unit tests, which feed frames directly).
  void onFrame(const transport::FrameHeader& h, std::span<const std::byte> payload);
  bool bulkDone() const { return bulk_done_; }
  // Every staged page went through the installer (pre-copy, after the switch and the VMM).
  // Any thread (tests wait on it).
  bool stagingDrained() const { return drained_.load(std::memory_order_acquire); }

 private:
  void onOpen();
  // The link (re)opened: send what this side has -- installed pages, and staged ones -- so the
  // source streams only the rest.
  void sendResume();
  void onPages(std::uint64_t first, std::uint64_t count, const std::byte* data);
  void onStalePages(std::span<const std::byte> payload);
  void install(std::uint64_t first, std::uint64_t count, const std::byte* data);
  // After BulkDone (or the drain that followed it): ask again for what is still missing.
  void resumeIfMissing();
  // Pages that arrive now are staged: before the switch, or before the VMM exists.
  bool stagesPages() const {
    return staging_ != nullptr && (ctx_ == nullptr || !staging_->switched());
  }
  void startDrainIfReady();
  void drainStep();
  transport::Layout wire() const;
  void assertOnLoop() const;

  transport::EventLoop& loop_;
  std::shared_ptr<transport::TlsContext> tls_;
  SourceLinkParams params_;
  TransferRecorder recorder_;
  log::Logger log_;
  Hooks hooks_;
  const DestinationContext* ctx_ = nullptr;  // null until the VMM's handshake (pre-copy)
  PrecopyStaging* staging_ = nullptr;        // null: pure post-copy
  std::unique_ptr<SourceLink> link_;
  bool bulk_done_ = false;
  bool draining_ = false;
  std::atomic<bool> drained_{false};
  std::uint64_t drain_cursor_ = 0;
  transport::Timer drain_timer_;
};

}  // namespace lazymig::agent

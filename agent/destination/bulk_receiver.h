// The destination's end of the bulk stream: owns the bulk link to the source, tells the source
// what is already installed (Resume) and installs each batch in as few ioctls as the page map
// allows. Lives on the bulk loop thread. The counterpart of FaultService, which owns the
// urgent link.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "agent/destination/destination_context.h"
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
  BulkReceiver(const DestinationContext& ctx, Hooks hooks)
      : ctx_(ctx), log_(ctx.log), hooks_(std::move(hooks)) {}
  BulkReceiver(const BulkReceiver&) = delete;
  BulkReceiver& operator=(const BulkReceiver&) = delete;

  // Every method runs on the bulk loop (asserted).
  // Connects the bulk link; the source streams once it has heard the Resume.
  void start();
  void stop();
  // Every page is installed: read what the source still sends until it closes the link, or
  // `linger` passes (SourceLink::finish).
  void finish(std::chrono::milliseconds linger);
  // One frame from the bulk link (public for the unit tests, which feed frames directly).
  void onFrame(const transport::FrameHeader& h, std::span<const std::byte> payload);
  bool bulkDone() const { return bulk_done_; }

 private:
  // The link (re)opened: send the installed-page bitmap so the source streams only the rest.
  void sendResume();
  void install(std::uint64_t first, std::uint64_t count, const std::byte* data);
  void assertOnLoop() const;

  const DestinationContext& ctx_;
  log::Logger log_;
  Hooks hooks_;
  std::unique_ptr<SourceLink> link_;
  bool bulk_done_ = false;
};

}  // namespace lazymig::agent

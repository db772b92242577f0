// The destination's end of the bulk stream: tells the source what is already installed
// (Resume) and installs each batch in as few ioctls as the page map allows. Lives on the bulk
// loop thread.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "agent/core/migration_stats.h"
#include "agent/destination/population/page_installer.h"
#include "base/log.h"
#include "metrics/metrics.h"
#include "store/database.h"
#include "store/page_map.h"
#include "transport/frame.h"

namespace lazymig::agent {

class BulkReceiver {
 public:
  struct Hooks {
    std::function<bool(std::string_view frame)> send;
    std::function<void()> progressed;
    std::function<void(const Error&)> fatal;
  };
  BulkReceiver(const transport::Layout& layout, store::PageMap& pages, PageInstaller& installer,
               MigrationStats& stats, metrics::AgentMetrics* metrics, log::Logger logger,
               Hooks hooks)
      : layout_(layout),
        pages_(pages),
        installer_(installer),
        stats_(stats),
        metrics_(metrics),
        log_(std::move(logger)),
        hooks_(std::move(hooks)) {}

  // The channel (re)opened: send the installed-page bitmap so the source streams only the rest.
  void onOpen();
  void onFrame(const transport::FrameHeader& h, std::span<const std::byte> payload);
  bool bulkDone() const { return bulk_done_; }

 private:
  void install(std::uint64_t first, std::uint64_t count, const std::byte* data);

  transport::Layout layout_;
  store::PageMap& pages_;
  PageInstaller& installer_;
  MigrationStats& stats_;
  metrics::AgentMetrics* metrics_;
  log::Logger log_;
  Hooks hooks_;
  bool bulk_done_ = false;
};

}  // namespace lazymig::agent

// Pre-copy at the destination (docs/precopy.md): the bulk link and the staging exist from the
// migration's creation, before any VMM; BulkReceiver stages until the source's switch and
// installs once the VMM is there.
#include "agent/core/loop_sync.h"
#include "agent/destination/destination_migration.h"

namespace lazymig::agent {

using transport::ChannelKind;

Status DestinationMigration::startPrecopyLink() {
  staging_ = std::make_unique<PrecopyStaging>();
  auto bulk = transport::EventLoop::start("bulk-" + id());
  if (!bulk) return std::unexpected(bulk.error());
  bulk_loop_ = std::move(*bulk);
  cpu_.count(*bulk_loop_);
  // No VMM yet, so no layout: the source's HelloOk says it (docs/protocol.md, Hello).
  auto params = linkParams();
  params.kind = ChannelKind::kBulk;
  params.page_size = 0;
  params.memory_bytes = 0;
  runOnLoop(*bulk_loop_, [&] {
    bulk_receiver_ =
        std::make_unique<BulkReceiver>(BulkReceiver::LinkContext{.bulk_loop = *bulk_loop_,
                                                                 .tls = ctx_.tls_client,
                                                                 .link = std::move(params),
                                                                 .recorder = recorder_,
                                                                 .log = log_},
                                       *staging_, bulkHooks());
    bulk_receiver_->start();
  });
  log_.info("pre-copy: staging what the source sends until its switch",
            {{"precopy", precopyPolicyText(spec_.precopy)}});
  return {};
}

BulkReceiver::Hooks DestinationMigration::bulkHooks() {
  return BulkReceiver::Hooks{.progressed = [this] { progressed(); },
                             .fatal = [this](const Error& e) { failMigration(e); },
                             .gave_up = [this](const Error& e) { gaveUp(ChannelKind::kBulk, e); }};
}

Status DestinationMigration::checkStagingLayout(const vmm::Handshake& handshake) const {
  // The bulk link already heard the source's layout, and staged pages of it.
  if (handshake.page_size == staging_->pageSize() &&
      handshake.total_bytes == staging_->pageSize() * staging_->pageCount()) {
    return {};
  }
  return fail(Errc::kInvalidArgument, "vmm handshake",
              "the VMM's regions add up to " + std::to_string(handshake.total_bytes) +
                  " bytes in pages of " + std::to_string(handshake.page_size) +
                  ", which is not the memory the source serves (" +
                  std::to_string(staging_->pageSize() * staging_->pageCount()) +
                  " bytes in pages of " + std::to_string(staging_->pageSize()) +
                  "): a different guest, or the wrong snapshot");
}

nlohmann::json DestinationMigration::precopyStatus() const {
  return {{"mode", precopyPolicyText(spec_.precopy)},
          {"staged_pages", staging_->stagedPages()},
          {"stale_dropped", staging_->staleDropped()},
          {"switched", staging_->switched()},
          {"installed_from_staging", staging_->installedFromStaging()}};
}

}  // namespace lazymig::agent

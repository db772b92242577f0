// The ending handshake on the destination's side (docs/protocol.md): once every page is
// installed the migration is `completing` -- recorded, so that a restarted agent resumes
// here without the VMM -- and `Complete` goes to the source on every new urgent link until
// the source's CompleteAck; only then is it `completed`. Nothing fails the migration any
// more: the guest has all its memory, and only the source's word is missing.
#include "agent/core/loop_sync.h"
#include "agent/core/test_points.h"
#include "agent/destination/destination_migration.h"

namespace lazymig::agent {

using transport::ChannelKind;

void DestinationMigration::gaveUp(ChannelKind kind, const Error& why) {
  if (!finishing_.load()) {
    // A source that answered and refused (wrong size, wrong token...) is not unreachable:
    // say which it was, so that nobody hunts a network problem that is not there.
    const bool refused = why.op == "source refused the channel";
    return failMigration(
        Error::make(refused ? why.code : Errc::kTimeout,
                    refused ? "source refused the migration" : "source unreachable",
                    (refused ? why.context : why.message()) + "; " +
                        (ready_.load(std::memory_order_acquire)
                             ? std::to_string(pages_->pageCount() - pages_->doneCount()) +
                                   " pages never received"
                             : std::string("before the VMM's handshake (pre-copy)"))));
  }
  // Every page is installed: nothing can be lost here any more, only the source's
  // acknowledgement is missing, which the bulk channel does not carry.
  if (kind == ChannelKind::kBulk) return;
  // A source of protocol 1.0 has no CompleteAck: it answers a completed migration's Hello
  // with this refusal, written only after it recorded the migration completed.
  if (why.message().find("migration is completed") != std::string::npos) return acknowledged();
  endUnacknowledged(why.message());
}

void DestinationMigration::endUnacknowledged(const std::string& why) {
  if (setState(MigrationState::kCompleted,
               "every page is installed, but the source never acknowledged (" + why +
                   "); it may still hold the guest memory: confirm it before cleaning up")) {
    log_.warn("completed without the source's acknowledgement", {{"why", why}});
  }
}

void DestinationMigration::finish() {
  if (isFinal(state())) return;
  checkpoint_->run();
  // Every page is present: hand fault handling back to the kernel so that a later discard
  // (balloon) followed by a touch gets a fresh zero page instead of waiting on us forever.
  // Before `completing` is recorded: an agent restarted in `completing` no longer takes the
  // uffd back, so nothing else would unregister them.
  for (const auto& r : regions_) {
    auto ok = uffd_.unregisterRange(HostAddr{r.base_host_virt_addr}, Bytes{r.size});
    if (!ok) log_.warn("unregistering a guest region failed", {{"error", ok.error().message()}});
  }
  testPoint(test_point::kDestinationBeforeCompleting, log_);
  every_page_installed_ = true;
  setState(MigrationState::kCompleting);
  testPoint(test_point::kDestinationCompletingPersisted, log_);
  // The bulk stream has nothing left to carry; keep reading until the source closes it (see
  // SourceLink::finish).
  bulk_loop_->post([this] {
    if (bulk_receiver_) bulk_receiver_->finish(lingerTime());
  });
  if (SourceLink* link = urgentLink(); link && link->isOpen())
    sendComplete();
  else
    log_.info("every page installed; telling the source once the urgent link is back");
}

void DestinationMigration::sendComplete() {
  transport::Complete c{pages_->doneCount()};
  SourceLink* link = urgentLink();
  if (!link || !link->send(transport::encodeComplete(c))) return;
  log_.info("told the source every page is installed; waiting for its acknowledgement");
  testPoint(test_point::kDestinationCompleteSent, log_);
}

std::chrono::milliseconds DestinationMigration::lingerTime() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
      std::max(ctx_.config.migration.stall_timeout, std::chrono::milliseconds(1000)));
}

void DestinationMigration::acknowledged() {
  if (state() != MigrationState::kCompleting) {
    log_.warn("CompleteAck from the source before this side completed; ignored");
    return;
  }
  testPoint(test_point::kDestinationAckReceived, log_);
  source_acknowledged_ = true;
  log_.info("the source recorded the migration completed and releases the guest memory");
  // The source closes the link after its acknowledgement.
  urgentLink()->finish(lingerTime());
  setState(MigrationState::kCompleted);
}

Status DestinationMigration::resumeEnding(const RuntimeRecord& runtime) {
  auto layout = GuestLayout::fromMappings(runtime.regions);
  if (!layout) return std::unexpected(layout.error());
  regions_ = runtime.regions;
  layout_ = std::move(*layout);
  pages_ = std::make_unique<store::PageMap>(layout_->pageCount());
  pages_->restoreInstalled(Bitmap(layout_->pageCount(), true).words());
  restored_pages_ = pages_->doneCount();
  // Every page is installed already; it still answers degraded() and retryPersistence().
  checkpoint_ = std::make_unique<store::PageMapCheckpoint>(ctx_.db, id(), *pages_);
  {
    std::lock_guard lock(runtime_mu_);
    runtime_ = runtime;
  }
  handshaken_ = true;
  finishing_ = true;
  every_page_installed_ = true;
  ready_.store(true, std::memory_order_release);
  log_.info("every page was installed before the restart; telling the source",
            {{"pages", pages_->pageCount()}});
  auto urgent = transport::EventLoop::start("urgent-" + id());
  if (!urgent) return std::unexpected(urgent.error());
  urgent_loop_ = std::move(*urgent);
  cpu_.count(*urgent_loop_);
  setState(MigrationState::kCompleting);
  runOnLoop(*urgent_loop_, [this] { startEndingLink(); });
  return {};
}

void DestinationMigration::startEndingLink() {
  // The same urgent link FaultService would own, carrying nothing but the ending: Complete on
  // every new link, until the CompleteAck.
  SourceLinkParams params = linkParams();
  params.kind = ChannelKind::kUrgent;
  params.page_size = static_cast<std::uint32_t>(layout_->pageSize());
  params.memory_bytes = layout_->totalBytes().value;
  ending_link_ = std::make_unique<SourceLink>(
      *urgent_loop_, ctx_.tls_client, std::move(params),
      SourceLink::Handlers{
          .on_open =
              [this] {
                if (state() == MigrationState::kCompleting) sendComplete();
              },
          .on_frame =
              [this](const transport::FrameHeader& h, std::span<const std::byte> payload) {
                if (h.type != transport::FrameType::kCompleteAck) return;
                if (auto ok = transport::decodeCompleteAck(payload); !ok) {
                  log_.warn("unreadable CompleteAck; waiting for another",
                            {{"error", ok.error().message()}});
                  return;
                }
                acknowledged();
              },
          .on_down = [this](const Error&) { recorder_.reconnect(metrics::Channel::kUrgent); },
          .on_give_up = [this](const Error& e) { gaveUp(ChannelKind::kUrgent, e); }},
      log_);
  ending_link_->start();
}

}  // namespace lazymig::agent

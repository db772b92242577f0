#include "agent/destination/destination_migration.h"

#include <sys/stat.h>

#include <cassert>

#include "agent/core/loop_sync.h"
#include "agent/destination/fault_phases.h"
#include "agent/destination/source_probe.h"
#include "loop/assert_on_loop.h"
#include "sys/thread_priority.h"

namespace lazymig::agent {

using transport::ChannelKind;
using transport::FrameType;

DestinationMigration::DestinationMigration(DestinationSpec spec, AgentContext& ctx)
    : Migration(spec.id, "destination", specToJson(MigrationSpec(spec)), ctx, spec.peer_identity),
      spec_(std::move(spec)) {}

DestinationMigration::~DestinationMigration() { stopEverything(); }

Status DestinationMigration::start() {
  // Before the listener: a handshake (on the listener's thread) finds the staging and the bulk
  // loop already built, never half-built.
  if (spec_.precopy.mode != PrecopyPolicy::Mode::kOff && !bulk_loop_) {
    if (auto ok = startPrecopyLink(); !ok) return ok;
  }
  const auto& hs = ctx_.config.handshake;
  CredentialPolicy policy{hs.allowed_uids, hs.allowed_gids, spec_.vmm_pid};
  auto listener = VmmListener::start(
      spec_.handshake_socket, vmm::Receiver::kDestination, hs.socket_mode,
      ctx_.config.migration.handshake_timeout, policy,
      [this](vmm::Handshake h, const sys::PeerCredentials& peer, sys::UnixSocket conn) {
        return onHandshake(std::move(h), peer, std::move(conn));
      },
      [this](const std::string& reason, const Error&) { recorder_.refusal("handshake_" + reason); },
      log_);
  if (!listener) return std::unexpected(listener.error());
  listener_ = std::move(*listener);
  persist();
  log_.info("waiting for the VMM", {{"socket", spec_.handshake_socket}});
  return {};
}

Status DestinationMigration::onHandshake(vmm::Handshake handshake, const sys::PeerCredentials& peer,
                                         sys::UnixSocket connection) {
  if (isFinal(state())) {
    return fail(Errc::kState, "vmm handshake",
                "migration '" + id() + "' is " + std::string(stateName(state())));
  }
  if (handshaken_.exchange(true)) {
    return fail(Errc::kAlreadyExists, "vmm handshake",
                "migration '" + id() + "' already has a VMM (a second handshake is refused)");
  }
  if (auto ok = vmm::checkHandedFds(handshake, vmm::Receiver::kDestination); !ok) {
    handshaken_ = false;
    return ok;
  }
  auto choice = choosePopulation(handshake, kernelCapabilities());
  if (!choice) {
    handshaken_ = false;
    return std::unexpected(choice.error());
  }
  if (auto ok = checkSourceLayout(handshake); !ok) {
    handshaken_ = false;
    return ok;
  }
  kind_ = handshake.kind;
  population_ = std::move(*choice);
  if (auto ok = mapGuestMemory(handshake); !ok) {
    handshaken_ = false;
    return ok;
  }
  auto uffd = sys::Uffd::adopt(std::move(handshake.uffd));
  if (!uffd) {
    handshaken_ = false;
    return std::unexpected(uffd.error());
  }
  vmm_connection_ = std::move(connection);
  auto ok = adopt(std::move(*uffd), std::move(handshake.regions), peer.pid, {});
  if (!ok) {
    if (!ready_.load()) handshaken_ = false;
    return ok;
  }
  return {};
}

Status DestinationMigration::mapGuestMemory(vmm::Handshake& handshake) {
  if (handshake.kind == vmm::HandshakeKind::kClassic) return {};
  const bool bitmap = handshake.kind == vmm::HandshakeKind::kGuestMemfd;
  auto view = GuestMemoryView::map(handshake.memory, handshake.total_bytes, handshake.page_size,
                                   bitmap ? &handshake.userfault_bitmap : nullptr);
  if (!view) return std::unexpected(view.error());
  view_ = std::move(*view);
  memory_fd_ = std::move(handshake.memory);
  bitmap_fd_ = std::move(handshake.userfault_bitmap);
  return {};
}

Status DestinationMigration::adopt(sys::Uffd uffd, std::vector<vmm::GuestRegionMapping> regions,
                                   pid_t vmm_pid, std::vector<std::uint64_t> restored) {
  auto layout = GuestLayout::fromMappings(regions);
  if (!layout) return std::unexpected(layout.error());
  regions_ = std::move(regions);
  layout_ = std::move(*layout);
  uffd_ = std::move(uffd);
  pages_ = std::make_unique<store::PageMap>(layout_->pageCount());
  if (!restored.empty()) {
    pages_->restoreInstalled(restored);
    restored_pages_ = pages_->doneCount();
  }
  checkpoint_ = std::make_unique<store::PageMapCheckpoint>(ctx_.db, id(), *pages_);
  installer_ = std::make_unique<PageInstaller>(uffd_, *layout_, *pages_, population_.path,
                                               memory_fd_.valid() ? &view_ : nullptr);
  {
    std::lock_guard lock(runtime_mu_);
    runtime_ = RuntimeRecord{.vmm_pid = vmm_pid, .regions = regions_, .handshake = kind_};
    struct stat st {};
    if (memory_fd_.valid() && ::fstat(memory_fd_.get(), &st) == 0) {
      runtime_.memory = FileIdentity{static_cast<std::uint64_t>(st.st_dev),
                                     static_cast<std::uint64_t>(st.st_ino)};
    }
  }
  ready_.store(true, std::memory_order_release);
  log_.info(resumed_ ? "uffd recovered from the VMM" : "VMM handshake accepted",
            {{"vmm_pid", vmm_pid},
             {"regions", regions_.size()},
             {"bytes", layout_->totalBytes().value},
             {"page_size", layout_->pageSize()},
             {"handshake", vmm::handshakeKindName(kind_)},
             {"population_path", installer_->pathName()},
             {"pages_already_installed", restored_pages_.load()}});
  if (auto ok = startServing(); !ok) {
    failMigration(ok.error());
    return ok;
  }
  return {};
}

RuntimeRecord DestinationMigration::runtime() const {
  std::lock_guard lock(runtime_mu_);
  RuntimeRecord out = runtime_;
  if (every_page_installed_.load() && out.vmm_pid) out.every_page_installed = true;
  return out;
}

Status DestinationMigration::checkSourceLayout(const vmm::Handshake& handshake) const {
  if (staging_ && staging_->sized()) return checkStagingLayout(handshake);
  // Long enough for a TLS handshake to a source that serves; a source still waiting for its
  // memory holds the Hello unanswered, and the channels check the layout later.
  constexpr std::chrono::milliseconds kBound{1000};
  auto params = linkParams();
  params.page_size = static_cast<std::uint32_t>(handshake.page_size);
  params.memory_bytes = handshake.total_bytes;
  auto probe = probeSourceLayout(ctx_.tls_client, params, kBound);
  if (probe.answer != SourceLayoutAnswer::kDiffers) return {};
  return fail(Errc::kInvalidArgument, "vmm handshake",
              "the VMM's regions add up to " + std::to_string(handshake.total_bytes) +
                  " bytes in pages of " + std::to_string(handshake.page_size) +
                  ", which is not the memory the source serves (" + probe.detail +
                  "): a different guest, or the wrong snapshot");
}

SourceLinkParams DestinationMigration::linkParams() const {
  const auto& m = ctx_.config.migration;
  SourceLinkParams p;
  p.migration_id = id();
  p.token = spec_.token;
  p.source_address = spec_.source_address;
  p.expected_peer = spec_.peer_identity;
  p.initial_backoff = m.reconnect.initial_backoff;
  p.max_backoff = m.reconnect.max_backoff;
  p.give_up_after =
      std::chrono::duration_cast<std::chrono::milliseconds>(m.reconnect.give_up_after);
  p.stall_timeout = m.stall_timeout;
  return p;
}

Status DestinationMigration::startServing() {
  auto urgent = transport::EventLoop::start("urgent-" + id());
  if (!urgent) return std::unexpected(urgent.error());
  urgent_loop_ = std::move(*urgent);
  cpu_.count(*urgent_loop_);
  if (!bulk_loop_) {  // pre-copy started it at creation
    auto bulk = transport::EventLoop::start("bulk-" + id());
    if (!bulk) return std::unexpected(bulk.error());
    bulk_loop_ = std::move(*bulk);
    cpu_.count(*bulk_loop_);
  }
  // A restarted agent lost what the dead one staged: it stages afresh until the switch.
  if (spec_.precopy.mode != PrecopyPolicy::Mode::kOff && !staging_)
    staging_ = std::make_unique<PrecopyStaging>();
  recorder_.pagesRemaining(static_cast<std::int64_t>(pages_->pageCount()));
  context_.emplace(DestinationContext{.layout = *layout_,
                                      .pages = *pages_,
                                      .installer = *installer_,
                                      .uffd = uffd_,
                                      .recorder = recorder_,
                                      .log = log_,
                                      .urgent_loop = *urgent_loop_,
                                      .bulk_loop = *bulk_loop_,
                                      .tls = ctx_.tls_client,
                                      .link = linkParams(),
                                      .staging = staging_.get()});
  Status started;
  runOnLoop(*urgent_loop_, [&] {
    raiseFaultThreadPriority();
    faults_ = std::make_unique<FaultService>(
        *context_,
        FaultService::Hooks{
            .fatal = [this](const Error& e) { failMigration(e); },
            .progressed = [this] { progressed(); },
            // Every new link hears it again until the source acknowledges: a Complete sent on
            // a link that died, or to a source killed before it recorded it, is lost with them.
            .link_open =
                [this] {
                  if (state() == MigrationState::kCompleting) sendComplete();
                },
            .acknowledged = [this] { acknowledged(); },
            .gave_up = [this](const Error& e) { gaveUp(ChannelKind::kUrgent, e); },
            .reply =
                [this](const vmm::FaultReply& r) {
                  if (vmm_faults_) vmm_faults_->reply(r);
                }});
    started = faults_->start();
    if (started && kind_ == vmm::HandshakeKind::kGuestMemfd) started = startFaultChannel();
  });
  if (!started) return started;

  runOnLoop(*bulk_loop_, [&] {
    if (bulk_receiver_) {
      bulk_receiver_->attach(*context_);  // pre-copy: its link is up since creation
    } else {
      bulk_receiver_ = std::make_unique<BulkReceiver>(*context_, bulkHooks(), staging_.get());
      bulk_receiver_->start();
    }
    scheduleCheckpoint();
  });
  setState(MigrationState::kRunning);
  progressed();  // a zero-page guest is complete at once
  return {};
}

void DestinationMigration::raiseFaultThreadPriority() {
  LAZYMIG_ASSERT_ON_LOOP(*urgent_loop_);
  const int nice = ctx_.config.migration.fault_thread_nice;
  if (nice != 0) {
    if (auto set = sys::setThisThreadNice(nice); !set) {
      // Still correct, only slower on a crowded host: say so and serve.
      log_.warn("fault thread keeps the agent's priority", {{"error", set.error().message()}});
      std::lock_guard lock(runtime_mu_);
      fault_thread_nice_error_ = set.error().message();
    }
  }
  fault_thread_nice_.store(sys::thisThreadNice());
}

SourceLink* DestinationMigration::urgentLink() {
  assert(urgent_loop_->inLoopThread());
  if (faults_) return &faults_->link();
  return ending_link_.get();
}

Status DestinationMigration::startFaultChannel() {
  auto refuse = [this](const Error& e) {
    log_.warn("FaultRequest refused", {{"error", e.message()}});
    recorder_.refusal("fault_request");
  };
  vmm_faults_ = std::make_unique<VmmFaultChannel>(
      *urgent_loop_, vmm_connection_,
      VmmFaultChannel::Handlers{.on_request =
                                    [this, refuse](const vmm::FaultRequest& r) {
                                      if (auto ok = faults_->onFaultRequest(r); !ok)
                                        refuse(ok.error());
                                    },
                                .on_bad_request = refuse,
                                .on_closed =
                                    [this](const Error& e) {
                                      if (isFinal(state())) return;
                                      failMigration(Error::make(
                                          Errc::kPeerGone, "VMM fault socket",
                                          e.message() + "; vCPUs can no longer ask for pages"));
                                    }},
      log_);
  return vmm_faults_->start();
}

void DestinationMigration::progressed() {
  if (!ready_.load(std::memory_order_acquire)) return;  // nothing is installed before the VMM
  // A fault may wait on a page another path (the bulk stream) just populated: answer it now
  // rather than when the source's reply to its own request arrives.
  if (faults_ && faults_->anyWaiting()) {
    urgent_loop_->post([this] {
      if (faults_) faults_->answerDone();
    });
  }
  if (!pages_->complete() || finishing_.exchange(true)) return;
  urgent_loop_->post([this] { finish(); });
}

void DestinationMigration::scheduleCheckpoint() {
  checkpoint_timer_ = bulk_loop_->schedule(ctx_.config.migration.checkpoint_interval, [this] {
    checkpoint_->run();
    if (!isFinal(state())) scheduleCheckpoint();
  });
}

void DestinationMigration::failMigration(const Error& why) {
  if (finishing_.load()) {
    // Every page is installed, so the guest has all its memory whatever fails now (the VMM
    // exiting, a stray frame); the migration ends when the source acknowledges.
    log_.warn("error after every page was installed; ignored", {{"error", why.message()}});
    return;
  }
  if (setState(MigrationState::kFailed, why.message())) {
    // Faults already read stay unanswered on purpose (never zeros): the VM is frozen, and
    // the orchestrator decides what happens to it.
    if (urgent_loop_)
      urgent_loop_->post([this] {
        if (vmm_faults_) vmm_faults_->stop();
        if (faults_) faults_->stopReadingFaults();
      });
    // Nothing more can be installed: keep the bulk stream from asking again and again.
    if (bulk_loop_)
      bulk_loop_->post([this] {
        if (bulk_receiver_) bulk_receiver_->stop();
      });
  }
}

Status DestinationMigration::cancel(bool) {
  if (state() == MigrationState::kCompleting) {
    // The guest has every page: calling it cancelled would read as "roll back to the source",
    // which would run the VM twice. Only the source's acknowledgement is given up on.
    endUnacknowledged("the orchestrator stopped waiting for it");
  }
  setState(MigrationState::kCancelled, "cancelled by the control API");
  stopEverything();
  return {};
}

void DestinationMigration::shutdown() { stopEverything(); }

void DestinationMigration::stopEverything() {
  if (stopped_.exchange(true)) return;
  if (listener_) listener_->stop();
  if (urgent_loop_) {
    runOnLoop(*urgent_loop_, [this] {
      if (ending_link_) ending_link_->stop();
      if (vmm_faults_) vmm_faults_->stop();
      if (faults_) faults_->stop();
    });
  }
  if (bulk_loop_) {
    runOnLoop(*bulk_loop_, [this] {
      checkpoint_timer_.cancel();
      if (bulk_receiver_) bulk_receiver_->stop();
      if (checkpoint_) checkpoint_->run();
    });
  }
  if (urgent_loop_) urgent_loop_->stop();
  if (bulk_loop_) bulk_loop_->stop();
  if (pages_ && !pages_->complete()) {
    recorder_.pagesRemaining(-static_cast<std::int64_t>(pages_->pageCount() - pages_->doneCount()));
  }
}

void DestinationMigration::addDetails(nlohmann::json& out) const {
  out["handshake_socket"] = spec_.handshake_socket;
  out["source_address"] = spec_.source_address;
  bool ready = ready_.load(std::memory_order_acquire);
  // No installer after a restart in `completing` (resumeEnding): nothing is installed any more.
  out["population_path"] =
      ready && installer_ ? std::string(installer_->pathName()) : std::string();
  out["capabilities"] = kernelCapabilities().toJson();
  if (ready) {
    nlohmann::json memory = {{"handshake", std::string(vmm::handshakeKindName(kind_))},
                             {"page_size", layout_->pageSize()},
                             {"population", population_.details}};
    if (!population_.backing.empty()) memory["backing"] = population_.backing;
    if (memory_fd_.valid()) memory["write_method"] = std::string(view_.methodName());
    if (view_.hasBitmap()) {
      auto bits = view_.bitsSet();
      memory["userfault_bits_set"] = bits ? nlohmann::json(*bits) : nlohmann::json(nullptr);
      if (!bits) memory["userfault_bitmap_error"] = bits.error().message();
    }
    out["memory"] = std::move(memory);
  }
  if (staging_) out["precopy"] = precopyStatus();
  if (ready) {
    nlohmann::json fault_thread = {{"nice", fault_thread_nice_.load()}};
    std::lock_guard lock(runtime_mu_);
    if (!fault_thread_nice_error_.empty()) fault_thread["error"] = fault_thread_nice_error_;
    out["fault_thread"] = std::move(fault_thread);
  }
  out["resumed_after_restart"] = resumed_.load();
  out["source_acknowledged"] = source_acknowledged_.load();
  out["fault_phases_us"] = faultPhasesJson(stats_);
  out["progress"]["restored_pages"] = restored_pages_.load();
  out["progress"]["page_size"] = ready ? layout_->pageSize() : 0;
  double secs = out["elapsed_seconds"].get<double>();
  double mib = static_cast<double>(bytesMoved()) / (1 << 20);
  out["throughput_mib_s"] = secs > 0 ? mib / secs : 0.0;
}

std::optional<std::string> DestinationMigration::degraded() const {
  if (auto record = Migration::degraded()) return record;
  if (!ready_.load(std::memory_order_acquire)) return std::nullopt;
  return checkpoint_->failure();
}

void DestinationMigration::retryPersistence() {
  Migration::retryPersistence();
  // The bulk loop's timer retries too, but it stops once the migration is final.
  if (ready_.load(std::memory_order_acquire) && checkpoint_->failure()) checkpoint_->run();
}

std::uint64_t DestinationMigration::pagesTotal() const {
  return ready_.load(std::memory_order_acquire) ? pages_->pageCount() : 0;
}
std::uint64_t DestinationMigration::pagesDone() const {
  return ready_.load(std::memory_order_acquire) ? pages_->doneCount() : 0;
}
std::uint64_t DestinationMigration::bytesMoved() const {
  return ready_.load(std::memory_order_acquire) ? pages_->doneCount() * layout_->pageSize() : 0;
}

}  // namespace lazymig::agent

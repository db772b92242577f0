#include "agent/source/source_migration.h"

#include <sys/stat.h>

#include "agent/core/loop_sync.h"
#include "agent/source/source_ending.h"
#include "loop/assert_on_loop.h"
#include "sys/process.h"
#include "sys/thread_priority.h"

namespace lazymig::agent {

using transport::ChannelKind;
using transport::FrameType;

namespace {
BulkSender::Options bulkOptions(const config::Config& config) {
  return {std::size_t{config.migration.bulk_window_bytes_kib} * 1024,
          config.migration.bulk_batch_pages,
          static_cast<double>(config.migration.bulk_rate_limit_mib_s) * 1024 * 1024};
}
}  // namespace

SourceMigration::SourceMigration(SourceSpec spec, AgentContext& ctx,
                                 transport::EventLoop& peer_loop)
    : Migration(spec.id, "source", specToJson(MigrationSpec(spec)), ctx, spec.peer_identity),
      spec_(std::move(spec)),
      peer_loop_(peer_loop),
      recorder_(stats_, ctx.metrics),
      parked_(peer_loop, log_),
      bulk_(
          peer_loop, bulkOptions(ctx.config), recorder_, stats_,
          [this] { return isFinal(state()); }, log_) {}

SourceMigration::~SourceMigration() { shutdown(); }

Status SourceMigration::startUrgentLoop() {
  if (urgent_loop_) return {};
  auto loop = transport::EventLoop::start("src-urgent-" + id());
  if (!loop) return std::unexpected(loop.error());
  urgent_loop_ = std::move(*loop);
  urgent_loop_->post([this] { raiseUrgentThreadPriority(); });
  return {};
}

void SourceMigration::raiseUrgentThreadPriority() {
  LAZYMIG_ASSERT_ON_LOOP(*urgent_loop_);
  if (const int nice = ctx_.config.migration.source_urgent_thread_nice; nice != 0) {
    if (auto set = sys::setThisThreadNice(nice); !set) {
      // Still correct, only slower on a crowded host: say so and serve.
      log_.warn("urgent thread keeps the agent's priority", {{"error", set.error().message()}});
      std::lock_guard lock(runtime_mu_);
      urgent_thread_error_ = set.error().message();
    }
  }
  urgent_thread_nice_.store(sys::thisThreadNice());
  urgent_thread_set_.store(true, std::memory_order_release);
}

Status SourceMigration::start() {
  if (auto ok = startUrgentLoop(); !ok) return ok;
  if (!spec_.snapshot_file.empty()) {
    auto mem = SourceMemory::fromSnapshotFile(spec_.snapshot_file, spec_.page_size);
    if (!mem) return std::unexpected(mem.error());
    preparePrecopy({}, {}, {}, spec_.page_size, (*mem)->pageCount());
    return useMemory(std::move(*mem));
  }
  return listenForHandover();
}

Status SourceMigration::listenForHandover() {
  const auto& hs = ctx_.config.handshake;
  auto listener = VmmListener::start(
      spec_.handover_socket, vmm::Receiver::kSource, hs.socket_mode,
      ctx_.config.migration.handshake_timeout,
      CredentialPolicy{hs.allowed_uids, hs.allowed_gids, std::nullopt},
      [this](vmm::Handshake h, const sys::PeerCredentials& peer, sys::UnixSocket) -> Status {
        return useHandover(std::move(h), peer);
      },
      [this](const std::string& reason, const Error&) { recorder_.refusal("handshake_" + reason); },
      log_);
  if (!listener) return std::unexpected(listener.error());
  listener_ = std::move(*listener);
  persist();
  return {};
}

Status SourceMigration::useHandover(vmm::Handshake h, const sys::PeerCredentials& peer) {
  if (ready_.load()) {
    return fail(Errc::kAlreadyExists, "memory handover",
                "migration '" + id() + "' already has its memory");
  }
  if (auto ok = vmm::checkHandedFds(h, vmm::Receiver::kSource); !ok) return ok;
  struct stat st {};
  if (h.memory.valid()) ::fstat(h.memory.get(), &st);
  std::vector<vmm::GuestRegionMapping> regions = h.regions;
  const std::uint64_t page_size = h.page_size;
  // A live source's write tracking travels beside the memory (vmm/source_handover.h).
  sys::UniqueFd wp_uffd = std::move(h.uffd);
  sys::UniqueFd pagemap = std::move(h.pagemap);
  h.kind = vmm::HandshakeKind::kClassic;  // what is left: the memory fd alone
  auto mem = SourceMemory::fromHandover(std::move(h));
  if (!mem) return std::unexpected(mem.error());
  preparePrecopy(std::move(wp_uffd), std::move(pagemap), regions, page_size, (*mem)->pageCount());
  {
    std::lock_guard lock(runtime_mu_);
    runtime_ = RuntimeRecord{.vmm_pid = peer.pid,
                             .regions = std::move(regions),
                             .memory = FileIdentity{static_cast<std::uint64_t>(st.st_dev),
                                                    static_cast<std::uint64_t>(st.st_ino)},
                             .live_source = live_};
  }
  log_.info("memory handed over", {{"vmm_pid", peer.pid}, {"live", precopy_ != nullptr}});
  return useMemory(std::move(*mem));
}

Status SourceMigration::resume(const RuntimeRecord& runtime) {
  if (!spec_.snapshot_file.empty() || !runtime.vmm_pid) return start();
  if (auto ok = startUrgentLoop(); !ok) return ok;
  // The paused VMM still holds the guest memory fd it handed over: take it back from its fd
  // table (the one whose inode is the one recorded) instead of asking it again. A record from
  // before the identity was kept cannot: the VMM hands its memory over again.
  const pid_t pid = *runtime.vmm_pid;
  Result<sys::UniqueFd> copy =
      runtime.memory ? sys::takeFdByInode(pid, runtime.memory->dev, runtime.memory->ino)
                     : fail(Errc::kNotFound, "resume", "no memory fd identity recorded");
  if (copy) {
    vmm::Handshake h;
    h.regions = runtime.regions;
    h.page_size = runtime.regions.front().page_size;
    for (const auto& r : runtime.regions) h.total_bytes += r.size;
    h.memory = std::move(*copy);
    if (auto mem = SourceMemory::fromHandover(std::move(h))) {
      {
        std::lock_guard lock(runtime_mu_);
        runtime_ = runtime;
      }
      if (runtime.live_source && spec_.precopy.mode != PrecopyPolicy::Mode::kOff) {
        precopy_ =
            PrecopySource::restarted(peer_loop_, (*mem)->pageCount(), runtime.precopy_switched);
        live_ = true;
        hold_urgent_.store(!runtime.precopy_switched);
      }
      log_.info("guest memory taken back from the source VMM", {{"vmm_pid", pid}});
      return useMemory(std::move(*mem));
    }
  }
  log_.warn("could not take the memory back from the source VMM; waiting for a new handover",
            {{"vmm_pid", pid}});
  return listenForHandover();
}

RuntimeRecord SourceMigration::runtime() const {
  std::lock_guard lock(runtime_mu_);
  return runtime_;
}

Status SourceMigration::useMemory(std::unique_ptr<SourceMemory> memory) {
  log_.info(
      "serving guest memory",
      {{"memory", memory->describe()}, {"bytes", memory->bytes()}, {"pages", memory->pageCount()}});
  page_count_.store(memory->pageCount());
  page_size_.store(memory->pageSize());
  memory_ = std::move(memory);
  if (precopy_) precopy_->recordInto(recorder_);
  cpu_.count(peer_loop_);
  cpu_.count(*urgent_loop_);
  ready_.store(true, std::memory_order_release);
  setState(MigrationState::kServing);
  peer_loop_.post([this] { attachParked(); });
  return {};
}

void SourceMigration::attachParked() {
  LAZYMIG_ASSERT_ON_LOOP(peer_loop_);
  for (auto& waiting : parked_.take()) attach(std::move(waiting.conn), waiting.hello);
}

std::optional<HelloRefusal> SourceMigration::attach(std::unique_ptr<transport::Connection> conn,
                                                    const transport::Hello& hello) {
  LAZYMIG_ASSERT_ON_LOOP(peer_loop_);
  const auto now = state();
  if (isFinal(now)) {
    // A destination that did not hear our CompleteAck (a link or either agent died around
    // it) asks again, and learns the outcome.
    auto refused = answerFinishedSource(
        *conn, hello, FinishedSource{spec_.peer_identity, spec_.token, std::string(stateName(now))},
        log_);
    if (refused) recorder_.refusal(helloRefusalName(refused->reason));
    return refused;
  }
  const bool ready = ready_.load(std::memory_order_acquire);
  auto refused = checkHello(
      *conn, hello, {spec_.peer_identity, spec_.token, now, ready ? memory_.get() : nullptr}, log_);
  if (refused && refused->reason == HelloRefusalReason::kNotReady) {
    parked_.park(std::move(conn), hello);
    return std::nullopt;
  }
  if (refused) {
    recorder_.refusal(helloRefusalName(refused->reason));
    conn->sendEncoded(
        transport::encodeError({static_cast<std::uint16_t>(refused->code), refused->message}));
    conn->close();
    return refused;
  }
  auto hello_ok =
      transport::encodeHelloOk({static_cast<std::uint32_t>(memory_->pageSize()), memory_->bytes()});
  if (!schedule_) schedule_.emplace(memory_->pageCount());
  const bool urgent = hello.channel == ChannelKind::kUrgent;
  log_.info("channel open",
            {{"channel", urgent ? "urgent" : "bulk"}, {"remote", conn->remoteAddress()}});
  if (urgent) {
    moveUrgent(std::move(conn), std::move(hello_ok));
  } else {
    conn->sendEncoded(hello_ok);
    if (precopy_) bulk_.usePrecopy(precopy_.get());
    bulk_.attach(std::move(conn), memory_, *schedule_);
  }
  return std::nullopt;
}

void SourceMigration::closeChannels() {
  bulk_.close();
  parked_.close();
  // The urgent loop never waits for this one, so this wait ends. Stopped (a second shutdown),
  // it runs here: its thread has been joined.
  if (urgent_loop_) runOnLoop(*urgent_loop_, [this] { closeUrgent(); });
}

void SourceMigration::releaseMemory() {
  closeChannels();
  // Page contents may still be referenced by freed connections' buffers until this loop
  // iteration ends; release the mapping on the next one.
  peer_loop_.post([this] {
    if (!released_.exchange(true)) {
      ready_.store(false, std::memory_order_release);
      memory_.reset();
      log_.info("guest memory released");
    }
  });
}

Status SourceMigration::cancel(bool force) {
  if (state() == MigrationState::kServing && !force) {
    return fail(Errc::kState, "cancel",
                "migration '" + id() +
                    "' is still serving its destination; releasing its memory would lose the VM "
                    "(use force=true to cancel anyway)");
  }
  setState(MigrationState::kCancelled, force ? "cancelled with force" : "cancelled");
  shutdown();
  return {};
}

void SourceMigration::shutdown() {
  if (listener_) listener_->stop();
  runOnLoop(peer_loop_, [this] { closeChannels(); });
  if (!urgent_loop_) return;
  urgent_loop_->stop();
  // What the urgent loop posted to the peer loop before it stopped runs while this lives.
  runOnLoop(peer_loop_, [] {});
}

void SourceMigration::addDetails(nlohmann::json& out) const {
  out["memory"] = spec_.snapshot_file.empty() ? "handover_socket " + spec_.handover_socket
                                              : "snapshot_file " + spec_.snapshot_file;
  out["progress"]["served_demand_pages"] = stats_.served_demand_pages.load();
  out["progress"]["served_bulk_pages"] = stats_.served_bulk_pages.load();
  out["progress"]["served_zero_pages"] = stats_.served_zero_pages.load();
  out["progress"]["page_size"] = page_size_.load();
  out["memory_released"] = released_.load();
  if (urgent_thread_set_.load(std::memory_order_acquire)) {
    nlohmann::json urgent_thread = {{"nice", urgent_thread_nice_.load()}};
    std::lock_guard lock(runtime_mu_);
    if (!urgent_thread_error_.empty()) urgent_thread["error"] = urgent_thread_error_;
    out["urgent_thread"] = std::move(urgent_thread);
  }
  // precopy_ is set before ready_ and never reset: readable once the memory was there.
  const bool had_memory = ready_.load(std::memory_order_acquire) || released_.load();
  if (had_memory && precopy_) {
    out["precopy"] = precopy_->status();
  } else if (spec_.precopy.mode != PrecopyPolicy::Mode::kOff || !precopyNote().empty()) {
    out["precopy"] = {{"state", had_memory ? "off" : "waiting_for_memory"}};
    if (auto note = precopyNote(); !note.empty()) out["precopy"]["reason"] = note;
  }
}

std::uint64_t SourceMigration::pagesTotal() const { return page_count_.load(); }
std::uint64_t SourceMigration::bytesMoved() const { return pagesDone() * page_size_.load(); }
std::uint64_t SourceMigration::pagesDone() const {
  // Pages re-sent after a reconnect count again; never report more than there are.
  return std::min(page_count_.load(), stats_.served_demand_pages.load() +
                                          stats_.served_bulk_pages.load() +
                                          stats_.served_zero_pages.load());
}

}  // namespace lazymig::agent

#include "agent/source/source_migration.h"

#include <sys/stat.h>

#include "agent/core/loop_sync.h"
#include "agent/core/test_points.h"
#include "agent/source/source_ending.h"
#include "sys/process.h"

namespace lazymig::agent {

using transport::ChannelKind;
using transport::FrameType;

namespace {
// Demand replies queued for a destination that does not read them. A real one has at most a
// few requests per vCPU in flight (kilobytes to a few MiB); past this it is flooding us, and
// the queue would otherwise grow until the agent runs out of memory.
constexpr std::size_t kUrgentBacklogLimit = 64u << 20;
}  // namespace

SourceMigration::SourceMigration(SourceSpec spec, AgentContext& ctx,
                                 transport::EventLoop& peer_loop)
    : Migration(spec.id, "source", specToJson(MigrationSpec(spec)), ctx, spec.peer_identity),
      spec_(std::move(spec)),
      peer_loop_(peer_loop) {
  bulk_window_bytes_ = std::size_t{ctx.config.migration.bulk_window_bytes_kib} * 1024;
  bulk_batch_pages_ = ctx.config.migration.bulk_batch_pages;
  bulk_rate_bytes_s_ =
      static_cast<double>(ctx.config.migration.bulk_rate_limit_mib_s) * 1024 * 1024;
}

SourceMigration::~SourceMigration() { shutdown(); }

Status SourceMigration::start() {
  if (!spec_.snapshot_file.empty()) {
    auto mem = SourceMemory::fromSnapshotFile(spec_.snapshot_file, spec_.page_size);
    if (!mem) return std::unexpected(mem.error());
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
        if (ready_.load()) {
          return fail(Errc::kAlreadyExists, "memory handover",
                      "migration '" + id() + "' already has its memory");
        }
        if (auto ok = vmm::checkHandedFds(h, vmm::Receiver::kSource); !ok) return ok;
        struct stat st {};
        if (h.memory.valid()) ::fstat(h.memory.get(), &st);
        std::vector<vmm::GuestRegionMapping> regions = h.regions;
        auto mem = SourceMemory::fromHandover(std::move(h));
        if (!mem) return std::unexpected(mem.error());
        {
          std::lock_guard lock(runtime_mu_);
          runtime_ = RuntimeRecord{.vmm_pid = peer.pid,
                                   .regions = std::move(regions),
                                   .memory = FileIdentity{static_cast<std::uint64_t>(st.st_dev),
                                                          static_cast<std::uint64_t>(st.st_ino)}};
        }
        log_.info("memory handed over", {{"vmm_pid", peer.pid}});
        return useMemory(std::move(*mem));
      },
      [this](const std::string& reason, const Error&) {
        if (ctx_.metrics) ctx_.metrics->addRefusal("handshake_" + reason);
      },
      log_);
  if (!listener) return std::unexpected(listener.error());
  listener_ = std::move(*listener);
  persist();
  return {};
}

Status SourceMigration::resume(const RuntimeRecord& runtime) {
  if (!spec_.snapshot_file.empty() || !runtime.vmm_pid) return start();
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
  cpu_.count(peer_loop_);
  ready_.store(true, std::memory_order_release);
  setState(MigrationState::kServing);
  peer_loop_.post([this] { attachParked(); });
  return {};
}

std::optional<SourceMigration::Parked>& SourceMigration::parked(ChannelKind kind) {
  return kind == ChannelKind::kUrgent ? parked_urgent_ : parked_bulk_;
}

void SourceMigration::park(std::unique_ptr<transport::Connection> conn,
                           const transport::Hello& hello) {
  const ChannelKind kind = hello.channel;
  auto& slot = parked(kind);
  if (slot) slot->conn->close();  // the destination gave up on it and connected again
  // Nothing may come before HelloOk; a closed or misbehaving channel just stops waiting. The
  // transport lets a handler drop its own connection.
  auto drop = [this, kind] {
    auto& waiting = parked(kind);
    if (waiting) waiting->conn->close();
    waiting.reset();
  };
  transport::Connection::Handlers handlers;
  handlers.on_frame = [drop](const transport::FrameHeader&, std::span<const std::byte>) { drop(); };
  handlers.on_closed = [drop](const Error&) { drop(); };
  conn->setHandlers(std::move(handlers));
  log_.info("destination waiting for the memory handover",
            {{"channel", kind == ChannelKind::kUrgent ? "urgent" : "bulk"},
             {"remote", conn->remoteAddress()}});
  slot = Parked{std::move(conn), hello};
}

void SourceMigration::attachParked() {
  for (auto* slot : {&parked_urgent_, &parked_bulk_}) {
    if (!*slot) continue;
    Parked p = std::move(**slot);
    slot->reset();
    if (auto refused = attach(std::move(p.conn), p.hello); refused && ctx_.metrics) {
      ctx_.metrics->addRefusal(*refused);
    }
  }
}

void SourceMigration::closeParked() {
  for (auto* slot : {&parked_urgent_, &parked_bulk_}) {
    if (*slot) (*slot)->conn->close();
    slot->reset();
  }
}

transport::Layout SourceMigration::layout() const {
  return {static_cast<std::uint32_t>(memory_->pageSize()), memory_->pageCount()};
}

std::optional<std::string> SourceMigration::checkHello(const transport::Hello& hello,
                                                       PeerErrorCode& code, std::string& message,
                                                       const transport::Connection& conn) const {
  if (auto refused =
          checkPeerAuthorised(conn, hello, spec_.peer_identity, spec_.token, code, message, log_)) {
    return refused;
  }
  if (isFinal(state())) {
    code = PeerErrorCode::kState;
    message = "migration is " + std::string(stateName(state()));
    return "state";
  }
  if (!ready_.load(std::memory_order_acquire)) {
    code = PeerErrorCode::kUnknownMigration;
    message = "the guest memory has not been handed over yet";
    return "not_ready";
  }
  if (hello.page_size != memory_->pageSize() || hello.memory_bytes != memory_->bytes()) {
    code = PeerErrorCode::kLayout;
    message = "destination expects " + std::to_string(hello.memory_bytes) + " bytes in pages of " +
              std::to_string(hello.page_size) + ", source has " + std::to_string(memory_->bytes()) +
              " in pages of " + std::to_string(memory_->pageSize());
    return "layout";
  }
  return std::nullopt;
}

std::optional<std::string> SourceMigration::attach(std::unique_ptr<transport::Connection> conn,
                                                   const transport::Hello& hello) {
  if (const auto now = state(); isFinal(now)) {
    // A destination that did not hear our CompleteAck (a link or either agent died around
    // it) asks again, and learns the outcome.
    return answerFinishedSource(
        *conn, hello, FinishedSource{spec_.peer_identity, spec_.token, std::string(stateName(now))},
        log_);
  }
  PeerErrorCode code{};
  std::string message;
  if (auto refused = checkHello(hello, code, message, *conn)) {
    if (*refused == "not_ready") {
      park(std::move(conn), hello);
      return std::nullopt;
    }
    conn->sendEncoded(transport::encodeError({static_cast<std::uint16_t>(code), message}));
    conn->close();
    return refused;
  }
  conn->sendEncoded(transport::encodeHelloOk(
      {static_cast<std::uint32_t>(memory_->pageSize()), memory_->bytes()}));
  if (!schedule_) schedule_.emplace(memory_->pageCount());
  ChannelKind kind = hello.channel;
  auto& slot = kind == ChannelKind::kUrgent ? urgent_ : bulk_;
  if (slot) {
    // A reconnect replaces a link this side has not noticed is dead yet.
    log_.info("channel replaced by a new connection");
    slot->close();
  }
  slot = std::move(conn);
  slot->setPriority(kind == ChannelKind::kUrgent ? 0 : 1);
  transport::Connection::Handlers handlers;
  handlers.on_closed = [this, kind](const Error& e) { channelClosed(kind, e); };
  if (kind == ChannelKind::kUrgent) {
    handlers.on_frame = [this](const transport::FrameHeader& h, std::span<const std::byte> p) {
      onUrgentFrame(h, p);
    };
  } else {
    resumed_ = false;
    resume_bitmap_.assign(Bitmap::wordsFor(memory_->pageCount()), 0);
    slot->setLowWatermark(bulk_window_bytes_ / 2);
    handlers.on_frame = [this](const transport::FrameHeader& h, std::span<const std::byte> p) {
      onBulkFrame(h, p);
    };
    handlers.on_drained = [this] { pumpBulk(); };
  }
  slot->setHandlers(std::move(handlers));
  log_.info("channel open", {{"channel", kind == ChannelKind::kUrgent ? "urgent" : "bulk"},
                             {"remote", slot->remoteAddress()}});
  return std::nullopt;
}

void SourceMigration::onUrgentFrame(const transport::FrameHeader& h,
                                    std::span<const std::byte> payload) {
  stats_.bytes_received.fetch_add(payload.size() + transport::kHeaderSize);
  switch (h.type) {
    case FrameType::kPageRequest: {
      auto req = transport::decodePageRequest(payload, layout(), transport::Limits{});
      if (!req) break;
      if (urgent_->pendingOutputBytes() > kUrgentBacklogLimit) {
        log_.warn(
            "the peer floods page requests without reading the replies; closing the urgent channel",
            {{"queued_bytes", static_cast<std::uint64_t>(urgent_->pendingOutputBytes())}});
        if (ctx_.metrics) ctx_.metrics->addRefusal("flood");
        urgent_->close();
        urgent_.reset();
        return;
      }
      stats_.demand_faults.fetch_add(req->pages.size(), std::memory_order_relaxed);
      for (auto p : req->pages) servePage(p);
      return;
    }
    case FrameType::kComplete: {
      auto c = transport::decodeComplete(payload, layout());
      if (!c) break;
      return completed(c->pages_installed);
    }
    case FrameType::kPing: {
      auto ping = transport::decodePing(payload);
      if (!ping) break;
      urgent_->sendEncoded(transport::encodePing(FrameType::kPong, *ping));
      return;
    }
    default:
      break;
  }
  // Anything else from the peer is a protocol error: drop this link (the destination
  // reconnects) and keep the migration and every other one running.
  log_.warn("bad frame on the urgent channel; closing it",
            {{"frame", transport::frameTypeName(h.type)}});
  if (ctx_.metrics) ctx_.metrics->addRefusal("protocol");
  urgent_->sendEncoded(transport::encodeError(
      {static_cast<std::uint16_t>(PeerErrorCode::kBadRequest), "malformed frame"}));
  urgent_->close();
  urgent_.reset();
}

void SourceMigration::servePage(std::uint64_t page) {
  schedule_->markSent(page);
  schedule_->noteFault(page);
  sendRun(*urgent_, page, 1, stats_.served_demand_pages);
}

std::uint64_t SourceMigration::sendRun(transport::Connection& conn, std::uint64_t first,
                                       std::uint64_t count, std::atomic<std::uint64_t>& counter) {
  const auto page_size = static_cast<std::uint32_t>(memory_->pageSize());
  const bool urgent = &conn == urgent_.get();
  std::uint64_t p = first;
  const std::uint64_t end = first + count;
  std::uint64_t wire = 0;
  if (count > 1 && memory_->prefaultHelps()) memory_->prefault(first, count);
  while (p < end) {
    bool zero = memory_->isZero(p);
    std::uint64_t q = p + 1;
    while (q < end && memory_->isZero(q) == zero) ++q;
    if (zero) {
      auto frame = transport::encodeZeroRange({p, q - p});
      conn.sendEncoded(frame);
      wire += frame.size();
      stats_.served_zero_pages.fetch_add(q - p, std::memory_order_relaxed);
    } else {
      auto prefix =
          transport::encodePageDataPrefix(p, static_cast<std::uint32_t>(q - p), page_size);
      auto body = memory_->pages(p, q - p);
      if (urgent) {
        // One buffer, so one TLS record: a vCPU waits on this reply, and a record split in
        // two costs the destination a second wake-up and read before it can install.
        std::string frame(reinterpret_cast<const char*>(prefix.data()), prefix.size());
        frame.append(reinterpret_cast<const char*>(body.data()), body.size());
        conn.sendEncoded(frame);
      } else {
        conn.sendWithBody(prefix, body, memory_);
      }
      wire += prefix.size() + (q - p) * page_size;
      counter.fetch_add(q - p, std::memory_order_relaxed);
    }
    p = q;
  }
  stats_.bytes_sent.fetch_add(wire, std::memory_order_relaxed);
  if (ctx_.metrics) {
    ctx_.metrics->addWireBytes(urgent ? metrics::Channel::kUrgent : metrics::Channel::kBulk,
                               metrics::Direction::kSent, wire);
  }
  return wire;
}

void SourceMigration::onBulkFrame(const transport::FrameHeader& h,
                                  std::span<const std::byte> payload) {
  if (h.type == FrameType::kPing) {
    if (auto ping = transport::decodePing(payload)) {
      bulk_->sendEncoded(transport::encodePing(FrameType::kPong, *ping));
      return;
    }
  }
  if (h.type == FrameType::kResume) {
    auto r = transport::decodeResume(payload, layout());
    if (r) {
      for (std::size_t i = 0; i < r->words.size(); ++i)
        resume_bitmap_[Bitmap::wordOf(r->first_page) + i] = r->words[i];
      if (r->last) {
        schedule_->reset(resume_bitmap_);
        resumed_ = true;
        bulk_done_sent_ = false;
        log_.info("bulk stream (re)starting", {{"pages_to_send", schedule_->remaining()}});
        pumpBulk();
      }
      return;
    }
  }
  log_.warn("bad frame on the bulk channel; closing it",
            {{"frame", transport::frameTypeName(h.type)}});
  if (ctx_.metrics) ctx_.metrics->addRefusal("protocol");
  bulk_->close();
  bulk_.reset();
}

void SourceMigration::pumpBulk() {
  if (!bulk_ || !resumed_ || isFinal(state()) || bulk_timer_.pending()) return;
  // bulk_batch_pages counts 4 KiB pages: a batch of huge pages is as many bytes, at least one
  // page, so that a frame stays under the transport's payload limit.
  const std::uint64_t batch_pages =
      std::max<std::uint64_t>(1, std::uint64_t{bulk_batch_pages_} * 4096 / memory_->pageSize());
  const double batch_bytes = static_cast<double>(batch_pages * memory_->pageSize());
  while (bulk_->pendingOutputBytes() < bulk_window_bytes_) {
    if (bulk_rate_bytes_s_ > 0) {
      auto now = std::chrono::steady_clock::now();
      double elapsed = std::chrono::duration<double>(now - bulk_refill_).count();
      bulk_refill_ = now;
      // At most a tenth of a second of burst, so the cap holds over short windows too.
      bulk_tokens_ = std::min(bulk_tokens_ + elapsed * bulk_rate_bytes_s_, bulk_rate_bytes_s_ / 10);
      if (bulk_tokens_ < batch_bytes) {
        auto wait = std::chrono::microseconds(
            static_cast<std::int64_t>((batch_bytes - bulk_tokens_) / bulk_rate_bytes_s_ * 1e6) + 1);
        bulk_timer_ = peer_loop_.schedule(
            std::max(std::chrono::duration_cast<std::chrono::milliseconds>(wait),
                     std::chrono::milliseconds(1)),
            [this] { pumpBulk(); });
        return;
      }
    }
    auto run = schedule_->next(batch_pages);
    if (!run) {
      if (!bulk_done_sent_) {
        bulk_done_sent_ = true;
        bulk_->sendEncoded(transport::encodeBulkDone({stats_.served_bulk_pages.load()}));
        log_.info("bulk stream sent every page");
      }
      return;
    }
    // Charge what went on the wire: runs pulled forward by faults are often a few pages.
    bulk_tokens_ -=
        static_cast<double>(sendRun(*bulk_, run->first, run->count, stats_.served_bulk_pages));
  }
}

void SourceMigration::channelClosed(ChannelKind kind, const Error& e) {
  log_.warn("channel closed", {{"channel", kind == ChannelKind::kUrgent ? "urgent" : "bulk"},
                               {"error", e.message()}});
  // Dropping the connection from its own close handler is allowed by the transport.
  (kind == ChannelKind::kUrgent ? urgent_ : bulk_).reset();
}

void SourceMigration::completed(std::uint64_t pages_installed) {
  log_.info("destination confirmed every page installed", {{"pages", pages_installed}});
  testPoint(test_point::kSourceCompleteReceived, log_);
  // Durable before the acknowledgement: once the destination has it, it stops asking, so a
  // source that acknowledged and then lost the record would serve a finished migration
  // forever. A source killed before this line hears the Complete again (docs/protocol.md).
  setState(MigrationState::kCompleted);
  testPoint(test_point::kSourceCompletePersisted, log_);
  if (urgent_) urgent_->sendEncoded(transport::encodeCompleteAck());
  testPoint(test_point::kSourceAckSent, log_);
  // Close after the callback that delivered Complete returns (closing flushes the
  // acknowledgement), then let the memory go.
  peer_loop_.post([this] { releaseMemory(); });
}

void SourceMigration::releaseMemory() {
  bulk_timer_.cancel();
  if (urgent_) urgent_->close();
  if (bulk_) bulk_->close();
  urgent_.reset();
  bulk_.reset();
  closeParked();
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
  auto drop = [this] {
    bulk_timer_.cancel();
    if (urgent_) urgent_->close();
    if (bulk_) bulk_->close();
    urgent_.reset();
    bulk_.reset();
    closeParked();
  };
  if (peer_loop_.inLoopThread())
    drop();
  else
    runOnLoop(peer_loop_, drop);
}

void SourceMigration::addDetails(nlohmann::json& out) const {
  out["memory"] = spec_.snapshot_file.empty() ? "handover_socket " + spec_.handover_socket
                                              : "snapshot_file " + spec_.snapshot_file;
  out["progress"]["served_demand_pages"] = stats_.served_demand_pages.load();
  out["progress"]["served_bulk_pages"] = stats_.served_bulk_pages.load();
  out["progress"]["served_zero_pages"] = stats_.served_zero_pages.load();
  out["progress"]["page_size"] = page_size_.load();
  out["memory_released"] = released_.load();
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

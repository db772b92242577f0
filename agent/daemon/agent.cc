#include "agent/daemon/agent.h"

#include <algorithm>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "agent/core/loop_sync.h"
#include "agent/core/migration_spec.h"
#include "agent/daemon/migration_history.h"
#include "agent/destination/destination_migration.h"
#include "agent/source/source_migration.h"
#include "base/version.h"
#include "loop/assert_on_loop.h"
#include "sys/thread_priority.h"

namespace lazymig::agent {
namespace {

Status makeDirs(const std::string& path, mode_t mode) {
  std::string partial;
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    partial = path.substr(0, pos);
    if (partial.empty()) continue;
    if (::mkdir(partial.c_str(), mode) != 0 && errno != EEXIST) return failSys("mkdir", partial);
  }
  return {};
}

std::string canonicalPath(const std::string& path) {
  std::error_code ec;
  auto c = std::filesystem::weakly_canonical(path, ec);
  return ec ? path : c.string();
}

std::string hostOf(const std::string& address) {
  auto colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

Result<std::string> readToken(const std::string& path) {
  std::ifstream in(path);
  if (!in) return fail(Errc::kConfig, "control_token_file", "cannot read " + path);
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.size() < 16) {
    return fail(Errc::kConfig, "control_token_file", path + ": token shorter than 16 characters");
  }
  return token;
}

// The metric's bounded label for a degraded migration's reason: ENOSPC as RocksDB words it,
// or our own refusal while the directory has too little room; anything else is an error.
std::string_view degradedLabel(const std::string& reason) {
  bool full = reason.find("No space left") != std::string::npos ||
              reason.find("bytes free") != std::string::npos;
  return full ? "store_full" : "store_error";
}

}  // namespace

Result<std::unique_ptr<Agent>> Agent::start(config::Config config) {
  std::unique_ptr<Agent> agent(new Agent(std::move(config)));
  if (auto ok = agent->init(); !ok) return std::unexpected(ok.error());
  return agent;
}

Agent::~Agent() { stop(); }

Status Agent::init() {
  if (auto lvl = log::parseLevel(config_.log_level)) log::setLevel(*lvl);
  if (auto fmt = log::parseFormat(config_.log_format)) log::setFormat(*fmt);
  for (const auto& dir : {config_.state_dir, config_.handshake_dir}) {
    if (auto ok = makeDirs(dir, 0750); !ok) return ok;
  }
  auto db = store::Database::open(config_.state_dir + "/db");
  if (!db) return std::unexpected(db.error());
  db_ = std::move(*db);
  metrics_ = metrics::AgentMetrics::create(config_.node_name);
  db_->setWriteObserver(
      [m = metrics_.get()](std::chrono::nanoseconds d) { m->observeStoreWrite(d); });
  if (!config_.metrics_listen.empty() && config_.metrics_listen != "off") {
    auto port = metrics_->startExposer(config_.metrics_listen);
    if (!port) return std::unexpected(port.error());
    metrics_address_ = hostOf(config_.metrics_listen) + ":" + std::to_string(*port);
  }
  transport::TlsFiles files{config_.tls.ca_file, config_.tls.cert_file, config_.tls.key_file};
  auto server = transport::TlsContext::create(transport::TlsContext::Side::kServer, files);
  if (!server) return std::unexpected(server.error());
  auto client = transport::TlsContext::create(transport::TlsContext::Side::kClient, files);
  if (!client) return std::unexpected(client.error());
  tls_server_ = std::move(*server);
  tls_client_ = std::move(*client);
  auto retire_loop = transport::EventLoop::start("retire");
  if (!retire_loop) return std::unexpected(retire_loop.error());
  retire_loop_ = std::move(*retire_loop);
  ctx_ = std::make_unique<AgentContext>(
      AgentContext{config_, tls_client_, *db_, metrics_.get(),
                   [this](const std::string& id) { scheduleRetire(id); }});
  if (auto ok = startPeerListener(); !ok) return ok;
  loadMigrations();
  forgetOldHistory();
  if (auto ok = startControlApi(); !ok) return ok;
  retire_loop_->post([this] { watchPersistence(); });
  ready_ = true;
  log_.info("agent ready", {{"node", config_.node_name},
                            {"agent", agent_address_},
                            {"control", control_address_},
                            {"metrics", metrics_address_}});
  return {};
}

Status Agent::startPeerListener() {
  auto peer = transport::EventLoop::start("peer");
  if (!peer) return std::unexpected(peer.error());
  peer_loop_ = std::move(*peer);

  Status status;
  runOnLoop(*peer_loop_, [&] {
    auto l = PeerListener::start(
        *peer_loop_, tls_server_,
        PeerListener::Options{config_.agent_listen, config_.migration.handshake_timeout},
        [this](const std::string& id) -> std::shared_ptr<SourceMigration> {
          return std::dynamic_pointer_cast<SourceMigration>(registry_.find(id));
        },
        [this](const std::string& id) { return registry_.findFinishedSource(id); }, metrics_.get());
    if (!l) {
      status = std::unexpected(l.error());
      return;
    }
    peer_listener_ = std::move(*l);
    agent_address_ = hostOf(config_.agent_listen) + ":" + std::to_string(peer_listener_->port());
  });
  return status;
}

Status Agent::startControlApi() {
  auto control = transport::EventLoop::start("control", 1);
  if (!control) return std::unexpected(control.error());
  control_loop_ = std::move(*control);
  Status status;
  std::string token;
  if (!config_.control_token_file.empty()) {
    auto t = readToken(config_.control_token_file);
    if (!t) return std::unexpected(t.error());
    token = *t;
  }
  if (const auto& ct = config_.control_tls; !ct.cert_file.empty()) {
    auto tls = transport::TlsContext::create(transport::TlsContext::Side::kServer,
                                             {ct.client_ca_file, ct.cert_file, ct.key_file});
    if (!tls) return std::unexpected(tls.error());
    tls_control_ = std::move(*tls);
  }
  runOnLoop(*control_loop_, [&] {
    ControlApi::Backend backend{
        [this](const nlohmann::json& body, bool& created) { return create(body, created); },
        [this] { return info(); }, [this] { return ready_.load() && !stopped_.load(); }};
    auto api = ControlApi::start(*control_loop_, config_.control_listen, registry_,
                                 std::move(backend), token, tls_control_);
    if (!api) {
      status = std::unexpected(api.error());
      return;
    }
    control_ = std::move(*api);
    control_address_ = control_->boundAddress();
  });
  return status;
}

void Agent::loadMigrations() {
  auto stored = db_->listMigrations();
  if (!stored) {
    log_.error("cannot read migration records", {{"error", stored.error().message()}});
    return;
  }
  for (const auto& bad : stored->unreadable) reportUnreadable(bad);
  for (auto& r : stored->records) {
    if (r.state == "completed" || r.state == "failed" || r.state == "cancelled") {
      registry_.addHistory(r.id, historyOfFinishedRecord(r));
      auto saved = SavedMigration::fromJson(r.spec_json, r.id);
      if (auto f = saved ? finishedSourceOf(saved->spec, r.state) : std::nullopt)
        registry_.addFinishedSource(r.id, std::move(*f));
      continue;
    }
    resumeMigration(std::move(r));
  }
}

void Agent::reportUnreadable(const store::UnreadableRecord& bad) {
  log_.error("cannot read a migration record after restart; the migration is not resumed",
             {{"migration", bad.key}, {"error", bad.error.message()}});
  registry_.addHistory(bad.key, historyOfUnreadableRecord(bad, unixMillisNow()));
}

void Agent::resumeMigration(store::MigrationRecord r) {
  auto saved = SavedMigration::fromJson(r.spec_json, r.id);
  const nlohmann::json spec_json = saved ? saved->spec : nlohmann::json();
  auto spec = saved ? parseMigrationSpec(spec_json, config_.handshake_dir)
                    : Result<MigrationSpec>(std::unexpected(saved.error()));
  auto failed = [&](const std::string& why) {
    log_.error("cannot resume migration after restart", {{"migration", r.id}, {"error", why}});
    r.state = "failed";
    r.reason = "agent restarted and could not resume: " + why;
    r.updated_unix_ms = unixMillisNow();
    (void)db_->putMigration(r);
    if (auto f = finishedSourceOf(spec_json, r.state)) registry_.addFinishedSource(r.id, *f);
    registry_.addHistory(r.id, recordSummary(r));
  };
  if (!spec) return failed(spec.error().message());
  std::shared_ptr<Migration> m = newMigration(*spec);
  bool added = false;
  registry_.addIfAbsent(m, added);
  log_.info("resuming migration after restart",
            {{"migration", r.id}, {"role", r.role}, {"was", r.state}});
  if (auto ok = m->resume(saved->runtime); !ok) {
    m->shutdown();
    registry_.remove(r.id);
    failed(ok.error().message());
  }
}

std::shared_ptr<Migration> Agent::newMigration(const MigrationSpec& spec) {
  if (const auto* s = std::get_if<SourceSpec>(&spec)) {
    return std::make_shared<SourceMigration>(*s, *ctx_, *peer_loop_);
  }
  return std::make_shared<DestinationMigration>(std::get<DestinationSpec>(spec), *ctx_);
}

std::expected<std::shared_ptr<Migration>, ApiError> Agent::create(const nlohmann::json& body,
                                                                  bool& created) {
  LAZYMIG_ASSERT_ON_LOOP(*control_loop_);
  auto spec = parseMigrationSpec(body, config_.handshake_dir);
  if (!spec) return std::unexpected(ApiError{400, "bad_request", spec.error().message()});
  auto want = specToJson(*spec);
  const std::string id = want["id"];
  if (auto finished = registry_.findHistory(id)) {
    // Finished before this agent restarted: its spec is gone with its runtime, and a new
    // migration under the same id would confuse both agents' records.
    return std::unexpected(ApiError{409, "conflict",
                                    "migration '" + id + "' already finished (" +
                                        finished->value("state", "") +
                                        "); use a new id for a new attempt"});
  }
  if (auto existing = registry_.find(id)) {
    created = false;
    if (existing->spec() == want) return existing;
    return std::unexpected(
        ApiError{409, "conflict", "migration '" + id + "' exists with a different request"});
  }
  if (auto owner = socketOwner(want); !owner.empty()) {
    return std::unexpected(ApiError{409, "conflict", owner});
  }
  // A migration that starts without a record would be lost by a restart, and one that
  // cannot checkpoint would start over: take none while the state directory has no room.
  if (auto room = db_->checkRoom(); !room) {
    return std::unexpected(ApiError{507, "insufficient_storage",
                                    "no new migration while state_dir '" + config_.state_dir +
                                        "' cannot persist it: " + room.error().context});
  }
  std::shared_ptr<Migration> m = newMigration(*spec);
  auto registered = registry_.addIfAbsent(m, created);
  if (!created) return registered;
  if (auto ok = m->start(); !ok) {
    // Never started (the snapshot file is missing, the socket path is taken...): forget it,
    // so that the orchestrator can fix the request and create it again under the same id.
    m->shutdown();
    registry_.remove(id);
    created = false;
    if (ok.error().code == Errc::kAlreadyExists) {
      return std::unexpected(ApiError{409, "conflict", ok.error().message()});
    }
    return std::unexpected(ApiError{400, "bad_request", ok.error().message()});
  }
  return m;
}

std::string Agent::socketOwner(const nlohmann::json& spec) const {
  auto socketOf = [](const nlohmann::json& s) -> std::pair<std::string, std::string> {
    if (s.contains("handshake_socket")) return {"handshake_socket", s["handshake_socket"]};
    const auto& mem = s.value("memory", nlohmann::json::object());
    if (mem.contains("handover_socket")) {
      return {"memory.handover_socket", mem["handover_socket"]};
    }
    return {};
  };
  auto [field, path] = socketOf(spec);
  if (path.empty()) return {};
  // Compared after resolving symlinks and "..": two spellings of one path are one socket.
  auto same = [canonical = canonicalPath(path)](const std::string& other) {
    return !other.empty() && canonicalPath(other) == canonical;
  };
  const std::string what = field + " '" + path + "' is ";
  const auto& control = config_.control_listen;
  if (control.rfind("unix:", 0) == 0 && same(control.substr(5))) {
    return what + "the agent's own control socket";
  }
  for (const auto& m : registry_.all()) {
    if (same(socketOf(m->spec()).second)) {
      return what + "the socket of migration '" + m->id() + "' (" +
             std::string(stateName(m->state())) + "); every migration needs its own";
    }
  }
  return {};
}

Status Agent::reloadCertificates() {
  transport::TlsFiles files{config_.tls.ca_file, config_.tls.cert_file, config_.tls.key_file};
  // Both or neither: check the files with a throwaway context before touching the live ones.
  if (auto probe = transport::TlsContext::create(transport::TlsContext::Side::kServer, files);
      !probe) {
    log_.error("certificate reload failed; keeping the certificates in use",
               {{"error", probe.error().message()}});
    return std::unexpected(probe.error());
  }
  for (auto* ctx : {tls_server_.get(), tls_client_.get()}) {
    if (auto ok = ctx->reload(files); !ok) {
      log_.error("certificate reload failed; keeping the certificates in use",
                 {{"error", ok.error().message()}});
      return ok;
    }
  }
  if (tls_control_) {
    const auto& ct = config_.control_tls;
    if (auto ok = tls_control_->reload({ct.client_ca_file, ct.cert_file, ct.key_file}); !ok) {
      log_.error("control API certificate reload failed; keeping the ones in use",
                 {{"error", ok.error().message()}});
      return ok;
    }
  }
  log_.info("certificates reloaded", {{"cert_file", files.cert_file}, {"ca_file", files.ca_file}});
  return {};
}

nlohmann::json Agent::info() const {
  return {{"node", config_.node_name},
          {"version", std::string(projectVersion())},
          {"revision", std::string(gitRevision())},
          {"agent_address", agent_address_},
          {"metrics_address", metrics_address_},
          {"migrations_active", registry_.activeCount()},
          {"fault_thread",
           {{"nice", config_.migration.fault_thread_nice},
            {"may_use_nice", sys::mayUseNice(config_.migration.fault_thread_nice)}}},
          {"source_urgent_thread",
           {{"nice", config_.migration.source_urgent_thread_nice},
            {"may_use_nice", sys::mayUseNice(config_.migration.source_urgent_thread_nice)}}}};
}

void Agent::scheduleRetire(const std::string& id) {
  // Longer than a completed destination lingers on its channels (SourceLink::finish), so
  // that retiring never cuts a Complete short.
  auto grace = std::max(config_.migration.stall_timeout, std::chrono::milliseconds(1000)) +
               std::chrono::milliseconds(2000);
  retire_loop_->scheduleDetached(std::chrono::duration_cast<std::chrono::milliseconds>(grace),
                                 [this, id] { retire(id); });
}

void Agent::retire(const std::string& id) {
  LAZYMIG_ASSERT_ON_LOOP(*retire_loop_);
  auto m = registry_.find(id);
  if (!m || !isFinal(m->state())) return;
  if (m->degraded()) {
    // Its final record is not persisted yet: a restart would resume it. Keep it (and its
    // report, with the reason) until watchPersistence() has written it.
    scheduleRetire(id);
    return;
  }
  auto report = m->toJson();
  if (auto f = finishedSourceOf(m->spec(), std::string(stateName(m->state()))))
    registry_.addFinishedSource(id, std::move(*f));
  // Stops its threads; the object (and with it the mappings and fds it holds) goes when the
  // last reference does -- here, or in a control API call still reading it.
  m->shutdown();
  registry_.retire(id, std::move(report));
  m.reset();
  log_.info("finished migration retired; its report stays", {{"migration", id}});
  forgetOldHistory();
}

void Agent::watchPersistence() {
  LAZYMIG_ASSERT_ON_LOOP(*retire_loop_);
  if (db_->failure()) {
    if (auto ok = db_->recover(); !ok)
      log_.debug("state directory still failing", {{"error", ok.error().message()}});
  }
  std::map<std::string_view, std::uint64_t> degraded;
  for (auto reason : metrics::kDegradedReasons) degraded[reason] = 0;
  for (auto& m : registry_.all()) {
    if (!m->degraded()) continue;
    m->retryPersistence();
    if (auto why = m->degraded()) ++degraded[degradedLabel(*why)];
  }
  for (auto [reason, count] : degraded) metrics_->setDegraded(reason, count);
  metrics_->setStoreWritable(!db_->failure());
  retire_loop_->scheduleDetached(kPersistenceRetry, [this] { watchPersistence(); });
}

void Agent::forgetOldHistory() {
  for (const auto& old : registry_.pruneHistory(kHistoryLimit)) {
    if (auto ok = db_->deleteMigration(old); !ok) {
      log_.warn("could not delete an old migration record",
                {{"migration", old}, {"error", ok.error().message()}});
    }
  }
}

void Agent::stop() {
  if (stopped_.exchange(true)) return;
  log_.info("agent stopping");
  // No retirement may run while (or after) migrations are shut down below.
  if (retire_loop_) retire_loop_->stop();
  if (control_loop_) runOnLoop(*control_loop_, [this] { control_.reset(); });
  for (auto& m : registry_.all()) m->shutdown();
  if (peer_loop_)
    runOnLoop(*peer_loop_, [this] {
      if (peer_listener_) peer_listener_->stop();
      peer_listener_.reset();
    });
  if (control_loop_) control_loop_->stop();
  if (peer_loop_) peer_loop_->stop();
  registry_.clear();
  db_.reset();
}

}  // namespace lazymig::agent

// The lazymig agent: the one place that wires the parts together -- config, RocksDB, metrics,
// TLS, the peer listener, the control API and the migrations.
#pragma once

#include <memory>

#include "agent/core/migration.h"
#include "agent/core/migration_spec.h"
#include "agent/daemon/control_api.h"
#include "agent/daemon/registry.h"
#include "agent/source/peer_listener.h"
#include "config/config.h"
#include "metrics/metrics.h"
#include "store/database.h"
#include "transport/connection.h"

namespace lazymig::agent {

class Agent {
 public:
  static Result<std::unique_ptr<Agent>> start(config::Config config);
  ~Agent();
  void stop();  // idempotent: stops migrations' threads, keeps their records
  // Loads tls.ca_file, cert_file and key_file again (SIGHUP): new connections use them,
  // connections already made keep theirs. On error nothing changes.
  Status reloadCertificates();
  const std::string& controlAddress() const { return control_address_; }
  const std::string& agentAddress() const { return agent_address_; }

 private:
  explicit Agent(config::Config config) : config_(std::move(config)) {}
  Status init();
  Status startPeerListener();
  Status startControlApi();
  // Finished migrations become history; unfinished ones are resumed (invariant 4).
  void loadMigrations();
  void resumeMigration(store::MigrationRecord record);
  // A record the store cannot read: logged with its id and shown as failed; nothing else.
  void reportUnreadable(const store::UnreadableRecord& bad);
  std::shared_ptr<Migration> newMigration(const MigrationSpec& spec);
  // A finished migration keeps its threads, fds and mappings (a minor-mode or guest_memfd
  // destination maps the guest's memory) until retired: after a grace period that lets its
  // channels close cleanly, it is shut down and only its report stays, as history.
  void scheduleRetire(const std::string& id);  // any thread
  void retire(const std::string& id);          // retire loop only
  void forgetOldHistory();
  // Every kPersistenceRetry on the retire loop: reopens a failed database once its directory
  // has room, writes again what degraded migrations could not persist, and sets the
  // degraded and store-writable metrics. Retire loop only.
  void watchPersistence();
  static constexpr std::chrono::milliseconds kPersistenceRetry{1000};
  // Control loop only (the API's backend): one create at a time, so a check and the
  // registration that follows it never interleave with another create.
  std::expected<std::shared_ptr<Migration>, ApiError> create(const nlohmann::json& body,
                                                             bool& created);
  nlohmann::json info() const;
  // Who already listens on the socket a new migration's spec names (the control API, another
  // live migration), as the message of a 409; empty when nobody does.
  std::string socketOwner(const nlohmann::json& spec) const;

  config::Config config_;
  std::unique_ptr<store::Database> db_;
  std::unique_ptr<metrics::AgentMetrics> metrics_;
  std::shared_ptr<transport::TlsContext> tls_server_;
  std::shared_ptr<transport::TlsContext> tls_client_;
  std::shared_ptr<transport::TlsContext> tls_control_;  // control_tls, when configured
  std::unique_ptr<AgentContext> ctx_;
  Registry registry_;
  std::unique_ptr<transport::EventLoop> peer_loop_;
  std::unique_ptr<transport::EventLoop> control_loop_;
  std::unique_ptr<transport::EventLoop> retire_loop_;  // started first, stopped first
  std::unique_ptr<PeerListener> peer_listener_;
  std::unique_ptr<ControlApi> control_;
  std::string control_address_;
  std::string agent_address_;
  std::string metrics_address_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> stopped_{false};
  log::Logger log_ = log::root().with({{"component", "agent"}});
  // Finished migrations kept (live reports and RocksDB records); older ones are forgotten.
  static constexpr std::size_t kHistoryLimit = 1000;
};

}  // namespace lazymig::agent

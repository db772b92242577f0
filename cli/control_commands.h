// The `lazymig` commands that talk to an agent's control API, and their exit codes:
// 0 done, 1 the agent answered with an error (or the migration ended failed/cancelled),
// 2 usage error (CLI11), 3 the agent could not be reached.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace lazymig::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitUnreachable = 3;

// The global options: where the agent is and how to talk to it.
struct ControlOptions {
  std::string control;
  std::string control_source;    // how `control` was chosen, for errors: "--control", ...
  std::string output = "table";  // table | json
  std::string token_file;
  std::string cacert, cert, key;
};

struct MigrateOptions {
  std::string id, role, token, peer_identity;
  std::string snapshot_file, handover_socket, source_address, handshake_socket;
  std::optional<int> vmm_pid;
  bool wait = false;
  int interval_ms = 500;
};

int migrate(const ControlOptions& g, const MigrateOptions& o);
int status(const ControlOptions& g, const std::string& id, bool watch, int interval_ms);
int list(const ControlOptions& g);
int cancel(const ControlOptions& g, const std::string& id, bool force);
int agentInfo(const ControlOptions& g);
// GET /healthz: prints one line; 0 healthy, 1 answered unhealthy, 3 unreachable.
int health(const ControlOptions& g, int timeout_ms);

}  // namespace lazymig::cli

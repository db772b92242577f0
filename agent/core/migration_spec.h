// The body of POST /v1/migrations, validated: every error names the field.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <variant>

#include <nlohmann/json.hpp>

#include "agent/core/precopy_policy.h"
#include "base/error.h"

namespace lazymig::agent {

struct SourceSpec {
  std::string id;
  std::string token;
  std::string peer_identity;
  std::string snapshot_file;  // one of these two
  std::string handover_socket;
  // A snapshot file's page size (2 MiB for hugetlbfs guests); a handover says its own.
  std::uint64_t page_size = 4096;
  // Pre-copy while the source VM runs (docs/precopy.md); runs only on a live handover.
  PrecopyPolicy precopy;
};

struct DestinationSpec {
  std::string id;
  std::string token;
  std::string peer_identity;
  std::string source_address;
  std::string handshake_socket;  // filled with <handshake_dir>/<id>.sock when absent
  std::optional<pid_t> vmm_pid;
  // Not off: connect to the source when created and stage what pre-copy sends.
  PrecopyPolicy precopy;
};

using MigrationSpec = std::variant<SourceSpec, DestinationSpec>;

bool isValidMigrationId(std::string_view id);
// `handshake_dir` supplies the default destination handshake socket.
Result<MigrationSpec> parseMigrationSpec(const nlohmann::json& body,
                                         const std::string& handshake_dir);
nlohmann::json specToJson(const MigrationSpec& spec);

}  // namespace lazymig::agent

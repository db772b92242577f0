// What a migration persists for a restarted agent, typed: the create request and what its
// role learned since (the VMM, its regions, the memory fd it handed over). The store keeps it
// as one JSON text (store::MigrationRecord::spec_json). Reading it back never throws: a record
// written by an older agent, cut short or with a wrong type is an Error that names the
// migration and the field, so that the agent reports that one migration and serves the rest.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "vmm/handshake.h"

namespace lazymig::agent {

// Which file a handed-over memory fd is: a restarted agent finds it again in the VMM's fd
// table by this identity (sys::takeFdByInode).
struct FileIdentity {
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  bool operator==(const FileIdentity&) const = default;
};

struct RuntimeRecord {
  // Absent until a VMM connected (destination) or handed its memory over (source); with it
  // come the regions, never empty.
  std::optional<pid_t> vmm_pid;
  std::vector<vmm::GuestRegionMapping> regions;
  // Destination: how the VMM handed the guest over. Records written before the kind was
  // kept hold none, and meant classic.
  vmm::HandshakeKind handshake = vmm::HandshakeKind::kClassic;
  // The memory fd the VMM handed over (source; destination in shared_minor). Records written
  // before it was kept hold none: a source then waits for a new handover.
  std::optional<FileIdentity> memory;
  // Destination: every page was installed; only telling the source remains.
  bool every_page_installed = false;
  // Source, pre-copy asked: the VMM handed over a live source (its VM ran while rounds were
  // sent), and whether the switch happened. A restarted agent cannot take the write tracking
  // back, so it vouches for no pre-copied page (docs/precopy.md).
  bool live_source = false;
  bool precopy_switched = false;

  // JSON null when nothing is known yet, as agents always wrote it.
  nlohmann::json toJson() const;
  // `migration_id` names the migration in errors; fields are named as "runtime.<field>".
  static Result<RuntimeRecord> fromJson(const nlohmann::json& json, std::string_view migration_id);
};

// The text of store::MigrationRecord::spec_json.
struct SavedMigration {
  nlohmann::json spec;  // the create request, as specToJson wrote it
  RuntimeRecord runtime;

  std::string toJson() const;
  // Also reads the first format, the bare spec without "spec" and "runtime".
  static Result<SavedMigration> fromJson(std::string_view text, std::string_view migration_id);
};

}  // namespace lazymig::agent

// What the agent shows of migrations a previous run of it left in RocksDB: finished ones as
// history (GET /v1/migrations/{id} answers as it did before the restart), records it cannot
// read as failed, and what a finished source needs to tell its destination the outcome.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/core/migration.h"
#include "agent/source/source_ending.h"
#include "store/database.h"

namespace lazymig::agent {

// A record's id, role, state, peer, reason and times, as the API names them.
nlohmann::json recordSummary(const store::MigrationRecord& r);

// A finished migration as GET /v1/migrations/{id} showed it before the restart: the report
// the record keeps, or for records written before reports were kept, what their counters say
// (then named "pages_done" for what the API calls "pages_installed").
nlohmann::json historyOfFinishedRecord(const store::MigrationRecord& r);

// A record the store cannot read, kept as it is in RocksDB for whoever investigates: shown as
// failed so that the orchestrator sees it and its id is not taken by a new migration by
// mistake.
nlohmann::json historyOfUnreadableRecord(const store::UnreadableRecord& bad,
                                         std::int64_t now_unix_ms);

// What a finished source migration needs to tell its destination the outcome later; nothing
// for a destination's spec.
std::optional<FinishedSource> finishedSourceOf(const nlohmann::json& spec, std::string state);

}  // namespace lazymig::agent

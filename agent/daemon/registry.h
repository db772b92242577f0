// The agent's migrations by id. Thread-safe (one mutex): the control loop, the peer loop,
// the retire loop and the main thread (start-up, stop) all use it; see docs/architecture.md.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/core/migration.h"
#include "agent/source/source_ending.h"

namespace lazymig::agent {

class Registry {
 public:
  // Adds `m` unless the id is taken; returns the migration now registered under the id.
  std::shared_ptr<Migration> addIfAbsent(std::shared_ptr<Migration> m, bool& added);
  std::shared_ptr<Migration> find(const std::string& id) const;
  void remove(const std::string& id);
  void clear();
  std::vector<std::shared_ptr<Migration>> all() const;
  // Records of earlier runs of this agent that are not live migrations (finished, or from
  // before a restart); shown by the control API.
  void addHistory(const std::string& id, nlohmann::json record);
  // A finished migration leaves the live set; its final report stays as history.
  void retire(const std::string& id, nlohmann::json report);
  // Drops the oldest history records (by updated_at) beyond `keep`; returns their ids.
  std::vector<std::string> pruneHistory(std::size_t keep);
  std::vector<nlohmann::json> history() const;
  std::optional<nlohmann::json> findHistory(const std::string& id) const;
  // A finished source migration's peer and token, kept beside its history record (and
  // forgotten with it), so that its destination can still be told the outcome.
  void addFinishedSource(const std::string& id, FinishedSource finished);
  std::optional<FinishedSource> findFinishedSource(const std::string& id) const;
  std::size_t activeCount() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Migration>> live_;
  std::map<std::string, nlohmann::json> history_;
  std::map<std::string, FinishedSource> finished_sources_;
};

}  // namespace lazymig::agent

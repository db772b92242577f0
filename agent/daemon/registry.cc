#include "agent/daemon/registry.h"

#include <algorithm>

namespace lazymig::agent {

std::shared_ptr<Migration> Registry::addIfAbsent(std::shared_ptr<Migration> m, bool& added) {
  std::lock_guard lock(mu_);
  auto [it, inserted] = live_.try_emplace(m->id(), m);
  added = inserted;
  if (inserted) {
    history_.erase(m->id());
    finished_sources_.erase(m->id());
  }
  return it->second;
}

std::shared_ptr<Migration> Registry::find(const std::string& id) const {
  std::lock_guard lock(mu_);
  auto it = live_.find(id);
  return it == live_.end() ? nullptr : it->second;
}

void Registry::clear() {
  std::map<std::string, std::shared_ptr<Migration>> live;
  {
    std::lock_guard lock(mu_);
    live.swap(live_);
  }
}

void Registry::remove(const std::string& id) {
  std::lock_guard lock(mu_);
  live_.erase(id);
}

std::vector<std::shared_ptr<Migration>> Registry::all() const {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Migration>> out;
  out.reserve(live_.size());
  for (auto& [id, m] : live_) out.push_back(m);
  return out;
}

void Registry::addHistory(const std::string& id, nlohmann::json record) {
  std::lock_guard lock(mu_);
  if (live_.count(id) == 0) history_[id] = std::move(record);
}

void Registry::retire(const std::string& id, nlohmann::json report) {
  std::lock_guard lock(mu_);
  live_.erase(id);
  history_[id] = std::move(report);
}

std::vector<std::string> Registry::pruneHistory(std::size_t keep) {
  std::lock_guard lock(mu_);
  std::vector<std::string> dropped;
  if (history_.size() <= keep) return dropped;
  std::vector<std::pair<std::string, std::string>> by_age;  // updated_at (ISO 8601), id
  by_age.reserve(history_.size());
  for (auto& [id, j] : history_) by_age.emplace_back(j.value("updated_at", ""), id);
  std::sort(by_age.begin(), by_age.end());
  for (std::size_t i = 0; i < history_.size() - keep; ++i) dropped.push_back(by_age[i].second);
  for (auto& id : dropped) {
    history_.erase(id);
    finished_sources_.erase(id);
  }
  return dropped;
}

std::vector<nlohmann::json> Registry::history() const {
  std::lock_guard lock(mu_);
  std::vector<nlohmann::json> out;
  out.reserve(history_.size());
  for (auto& [id, j] : history_) out.push_back(j);
  return out;
}

std::optional<nlohmann::json> Registry::findHistory(const std::string& id) const {
  std::lock_guard lock(mu_);
  auto it = history_.find(id);
  if (it == history_.end()) return std::nullopt;
  return it->second;
}

void Registry::addFinishedSource(const std::string& id, FinishedSource finished) {
  std::lock_guard lock(mu_);
  finished_sources_[id] = std::move(finished);
}

std::optional<FinishedSource> Registry::findFinishedSource(const std::string& id) const {
  std::lock_guard lock(mu_);
  auto it = finished_sources_.find(id);
  if (it == finished_sources_.end()) return std::nullopt;
  return it->second;
}

std::size_t Registry::activeCount() const {
  std::lock_guard lock(mu_);
  std::size_t n = 0;
  for (auto& [id, m] : live_) n += isFinal(m->state()) ? 0 : 1;
  return n;
}

}  // namespace lazymig::agent

#include "agent/daemon/migration_history.h"

#include <algorithm>

namespace lazymig::agent {

nlohmann::json recordSummary(const store::MigrationRecord& r) {
  return {{"id", r.id},
          {"role", r.role},
          {"state", r.state},
          {"peer", r.peer},
          {"reason", r.reason},
          {"created_at", isoTime(r.created_unix_ms)},
          {"updated_at", isoTime(r.updated_unix_ms)}};
}

nlohmann::json historyOfFinishedRecord(const store::MigrationRecord& r) {
  auto report = nlohmann::json::parse(r.report_json, nullptr, false);
  auto isString = [&report](const char* key) {
    return report.contains(key) && report[key].is_string();
  };
  // The history is read by key and type (the registry sorts it by updated_at): a report
  // without them is not used, the counters say the same.
  if (report.is_object() && report.contains("progress") && report["progress"].is_object() &&
      isString("id") && isString("state") && isString("updated_at"))
    return report;
  nlohmann::json j = recordSummary(r);
  nlohmann::json progress = nlohmann::json::object();
  for (const auto& [k, v] : r.counters) progress[k == "pages_done" ? "pages_installed" : k] = v;
  const std::uint64_t total = progress.value("pages_total", std::uint64_t{0});
  const std::uint64_t installed = progress.value("pages_installed", std::uint64_t{0});
  progress["pages_remaining"] = total - std::min(total, installed);
  j["progress"] = std::move(progress);
  return j;
}

nlohmann::json historyOfUnreadableRecord(const store::UnreadableRecord& bad,
                                         std::int64_t now_unix_ms) {
  const std::string now = isoTime(now_unix_ms);
  nlohmann::json shown{
      {"id", bad.key},
      {"state", "failed"},
      {"peer", ""},
      {"reason", "agent restarted and could not read the record: " + bad.error.message()},
      {"created_at", now},
      {"updated_at", now}};
  if (!bad.role.empty()) shown["role"] = bad.role;
  return shown;
}

std::optional<FinishedSource> finishedSourceOf(const nlohmann::json& spec, std::string state) {
  // Read field by field, not validated again: a spec an older agent accepted still counts.
  auto text = [&spec](const char* key) {
    auto it = spec.find(key);
    return it != spec.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (!spec.is_object() || text("role") != "source") return std::nullopt;
  return FinishedSource{text("peer_identity"), text("token"), std::move(state)};
}

}  // namespace lazymig::agent

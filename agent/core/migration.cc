#include "agent/core/migration.h"

#include <ctime>

namespace lazymig::agent {

std::string_view stateName(MigrationState state) {
  switch (state) {
    case MigrationState::kWaitingForVmm:
      return "waiting_for_vmm";
    case MigrationState::kWaitingForMemory:
      return "waiting_for_memory";
    case MigrationState::kRunning:
      return "running";
    case MigrationState::kServing:
      return "serving";
    case MigrationState::kCompleting:
      return "completing";
    case MigrationState::kCompleted:
      return "completed";
    case MigrationState::kFailed:
      return "failed";
    case MigrationState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

bool isFinal(MigrationState state) {
  return state == MigrationState::kCompleted || state == MigrationState::kFailed ||
         state == MigrationState::kCancelled;
}

std::int64_t unixMillisNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string isoTime(std::int64_t unix_ms) {
  std::time_t secs = unix_ms / 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(unix_ms % 1000));
  return buf;
}

Migration::Migration(std::string id, std::string role, nlohmann::json spec, AgentContext& ctx,
                     std::string peer)
    : ctx_(ctx),
      log_(log::Logger({{"migration", id}, {"role", role}, {"peer", peer}})),
      id_(std::move(id)),
      role_(std::move(role)),
      spec_(std::move(spec)),
      peer_(std::move(peer)),
      state_(role_ == "source" ? MigrationState::kWaitingForMemory
                               : MigrationState::kWaitingForVmm),
      created_ms_(unixMillisNow()),
      updated_ms_(created_ms_) {
  if (ctx_.metrics) ctx_.metrics->migrationState("", stateName(state_.load()));
}

std::string Migration::reason() const {
  std::lock_guard lock(mu_);
  return reason_;
}

bool Migration::setState(MigrationState next, std::string reason) {
  MigrationState prev;
  {
    std::lock_guard lock(mu_);
    prev = state_.load();
    if (isFinal(prev) || prev == next) return false;
    state_.store(next, std::memory_order_release);
    if (!reason.empty()) reason_ = reason;
    updated_ms_ = unixMillisNow();
    if (isFinal(next)) finished_ = std::chrono::steady_clock::now();
  }
  if (isFinal(next)) cpu_.stop();
  if (ctx_.metrics) {
    ctx_.metrics->migrationState(stateName(prev), stateName(next));
    if (isFinal(next)) {
      ctx_.metrics->observeMigrationDuration(stateName(next),
                                             std::chrono::steady_clock::now() - started_);
      ctx_.metrics->addMigrationCpu(role_, std::chrono::duration<double>(cpu_.total()).count(),
                                    bytesMoved());
    }
  }
  if (next == MigrationState::kFailed) {
    log_.error("migration failed", {{"state", stateName(next)}, {"reason", reason}});
  } else {
    log_.info("migration state",
              {{"state", stateName(next)}, {"from", stateName(prev)}, {"reason", reason}});
  }
  persist();
  if (isFinal(next)) {
    logReport();
    if (ctx_.on_final) ctx_.on_final(id_);
  }
  return true;
}

void Migration::logReport() const {
  // One line with the whole report, so that a log pipeline has it without the control API:
  // the migration object's numbers, flattened (progress.* bare, fault_latency_us.p50 as
  // fault_latency_us_p50).
  nlohmann::json report = toJson();
  std::vector<log::Field> fields;
  auto add = [&fields](const std::string& key, const nlohmann::json& v) {
    if (v.is_boolean())
      fields.emplace_back(key, v.get<bool>());
    else if (v.is_number_unsigned())
      fields.emplace_back(key, v.get<std::uint64_t>());
    else if (v.is_number_integer())
      fields.emplace_back(key, v.get<std::int64_t>());
    else if (v.is_number())
      fields.emplace_back(key, v.get<double>());
  };
  for (const char* key : {"state", "reason"}) fields.emplace_back(key, report.value(key, ""));
  for (const auto& [key, value] : report.items()) {
    if (!value.is_object())
      add(key, value);
    else
      for (const auto& [sub, v] : value.items()) {
        add(key == "progress" ? sub : std::string(key).append("_").append(sub), v);
      }
  }
  log_.write(log::Level::kInfo, "migration report", fields);
}

void Migration::persist() {
  record_writer_.write([this] { writeRecord(); });
}

void Migration::writeRecord() {
  store::MigrationRecord rec;
  {
    std::lock_guard lock(mu_);
    rec.id = id_;
    rec.role = role_;
    rec.state = std::string(stateName(state_.load()));
    rec.peer = peer_;
    rec.reason = reason_;
    rec.spec_json = SavedMigration{spec_, runtime()}.toJson();
    rec.created_unix_ms = created_ms_;
    rec.updated_unix_ms = updated_ms_;
  }
  rec.counters = {{"pages_total", pagesTotal()},
                  {"pages_installed", pagesDone()},
                  {"demand_faults", stats_.demand_faults.load()},
                  {"demand_pages", stats_.demand_pages.load()},
                  {"bulk_pages", stats_.bulk_pages.load()},
                  {"zero_pages", stats_.zero_pages.load()}};
  // Final states only: persist() runs from setState there, where toJson is safe to call (its
  // report is logged right after), and a finished migration's numbers no longer change.
  if (isFinal(state_.load())) rec.report_json = toJson().dump();
  auto ok = ctx_.db.putMigration(rec);
  std::lock_guard lock(mu_);
  if (ok) {
    if (record_failure_) log_.info("migration record persisted again", {{"state", rec.state}});
    record_failure_.reset();
    return;
  }
  if (!record_failure_) {
    log_.error("could not persist the migration record; carrying on from memory",
               {{"state", rec.state}, {"error", ok.error().message()}});
  }
  record_failure_ = "migration record: " + ok.error().message();
}

std::optional<std::string> Migration::degraded() const {
  std::lock_guard lock(mu_);
  return record_failure_;
}

void Migration::retryPersistence() {
  bool unsaved = false;
  {
    std::lock_guard lock(mu_);
    unsaved = record_failure_.has_value();
  }
  if (unsaved) persist();
}

nlohmann::json Migration::toJson() const {
  nlohmann::json out;
  std::chrono::steady_clock::time_point end;
  {
    std::lock_guard lock(mu_);
    out = {{"id", id_},
           {"role", role_},
           {"state", stateName(state_.load())},
           {"peer", peer_},
           {"reason", reason_},
           {"created_at", isoTime(created_ms_)},
           {"updated_at", isoTime(updated_ms_)}};
    end = finished_ == std::chrono::steady_clock::time_point{} ? std::chrono::steady_clock::now()
                                                               : finished_;
  }
  double elapsed = std::chrono::duration<double>(end - started_).count();
  out["elapsed_seconds"] = elapsed;
  std::uint64_t total = pagesTotal();
  std::uint64_t done = pagesDone();
  out["progress"] = {{"pages_total", total},
                     {"pages_installed", done},
                     {"pages_remaining", total - std::min(total, done)},
                     {"demand_faults", stats_.demand_faults.load()},
                     {"demand_pages", stats_.demand_pages.load()},
                     {"bulk_pages", stats_.bulk_pages.load()},
                     {"zero_pages", stats_.zero_pages.load()},
                     {"removed_pages", stats_.removed_pages.load()},
                     {"eexist_races", stats_.eexist_races.load()},
                     {"bytes_received", stats_.bytes_received.load()},
                     {"bytes_sent", stats_.bytes_sent.load()},
                     {"reconnects", stats_.reconnects.load()},
                     {"bytes_moved", bytesMoved()}};
  // The CPU of the migration's own threads per GiB of guest memory moved: what carries to
  // larger hosts (throughput = cores x GiB per CPU second), read against lazymig-floors.
  const double cpu = std::chrono::duration<double>(cpu_.total()).count();
  const auto cpu_per_gib =
      cpuSecondsPerGib(cpu, out["progress"]["bytes_moved"].get<std::uint64_t>());
  out["cpu_seconds"] = cpu;
  out["cpu_seconds_per_gib"] = cpu_per_gib ? nlohmann::json(*cpu_per_gib) : nlohmann::json();
  const auto& h = stats_.fault_latency;
  auto us = [](std::chrono::nanoseconds ns) { return static_cast<double>(ns.count()) / 1000.0; };
  out["fault_latency_us"] = {{"count", h.count()},
                             {"p50", us(h.percentile(0.5))},
                             {"p90", us(h.percentile(0.9))},
                             {"p99", us(h.percentile(0.99))},
                             {"max", us(h.max())}};
  // The whole distribution at fixed quantiles, for a CDF (each point within the histogram's
  // ~3% resolution, the bucket's upper edge); empty until a fault was served.
  out["fault_latency_cdf_us"] = nlohmann::json::array();
  for (double q : kLatencyCdfQuantiles) {
    if (h.count() > 0)
      out["fault_latency_cdf_us"].push_back({{"q", q}, {"us", us(h.percentile(q))}});
  }
  // Each fault blocks its vCPU from the fault to the wake, whichever way it was served.
  out["vcpu_blocked_seconds"] = static_cast<double>(h.sum().count()) / 1e9;
  addDetails(out);
  auto why = degraded();
  out["degraded"] = why.has_value();
  out["degraded_reason"] = why.value_or("");
  return out;
}

}  // namespace lazymig::agent

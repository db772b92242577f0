#include "cli/control_commands.h"

#include <cstdio>
#include <fstream>
#include <thread>

#include "cli/progress_line.h"
#include "client/control_client.h"

namespace lazymig::cli {
namespace {

using nlohmann::json;

struct Answer {
  int rc = kExitOk;
  json body;
};

int reportUnreachable(const ControlOptions& g, const Error& e) {
  if (e.code == Errc::kConfig || e.code == Errc::kInvalidArgument) {
    std::fprintf(stderr, "lazymig: %s\n", e.message().c_str());
    return kExitUsage;
  }
  std::fprintf(stderr,
               "lazymig: %s\nlazymig: looked at %s (%s); set --control or LAZYMIG_CONTROL\n",
               e.message().c_str(), g.control.c_str(), g.control_source.c_str());
  return kExitUnreachable;
}

int reportApiError(int status, const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error")) {
    std::fprintf(stderr, "lazymig: %s: %s\n", j["error"].value("code", "error").c_str(),
                 j["error"].value("message", "").c_str());
  } else {
    std::fprintf(stderr, "lazymig: HTTP %d: %s\n", status, body.c_str());
  }
  return kExitFailed;
}

client::ControlClient clientFor(const ControlOptions& g, std::chrono::milliseconds timeout) {
  client::ControlClient c(g.control, timeout);
  if (!g.token_file.empty()) {
    std::ifstream in(g.token_file);
    std::string token;
    std::getline(in, token);
    c.setBearerToken(token);
  }
  c.setTls(g.cacert, g.cert, g.key);
  return c;
}

Answer call(const ControlOptions& g, const std::string& method, const std::string& path,
            const std::string& body = "") {
  auto r = clientFor(g, std::chrono::seconds(10)).request(method, path, body);
  if (!r) return {reportUnreachable(g, r.error()), {}};
  if (r->status >= 300) return {reportApiError(r->status, r->body), {}};
  return {kExitOk, json::parse(r->body, nullptr, false)};
}

bool isFinal(const std::string& s) { return s == "completed" || s == "failed" || s == "cancelled"; }

void printTable(const json& m) {
  const json p = m.value("progress", json::object());
  std::uint64_t total = p.value("pages_total", 0), done = p.value("pages_installed", 0);
  double pct = total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 0;
  std::printf("migration   %s (%s)\nstate       %s%s%s\npeer        %s\n",
              m.value("id", "").c_str(), m.value("role", "").c_str(), m.value("state", "").c_str(),
              m.value("reason", "").empty() ? "" : ": ", m.value("reason", "").c_str(),
              m.value("peer", "").c_str());
  std::printf("pages       %llu / %llu (%.1f%%)\n", static_cast<unsigned long long>(done),
              static_cast<unsigned long long>(total), pct);
  if (m.value("role", "") == "destination") {
    const json l = m.value("fault_latency_us", json::object());
    std::printf("arrived     demand %llu, bulk %llu, zero %llu\n",
                static_cast<unsigned long long>(p.value("demand_pages", 0)),
                static_cast<unsigned long long>(p.value("bulk_pages", 0)),
                static_cast<unsigned long long>(p.value("zero_pages", 0)));
    std::printf("faults      %llu; latency p50 %.0f us, p99 %.0f us, max %.0f us\n",
                static_cast<unsigned long long>(p.value("demand_faults", 0)), l.value("p50", 0.0),
                l.value("p99", 0.0), l.value("max", 0.0));
    std::printf("throughput  %.1f MiB/s over %.2f s\n", m.value("throughput_mib_s", 0.0),
                m.value("elapsed_seconds", 0.0));
  } else {
    std::printf("served      demand %llu, bulk %llu, zero %llu\n",
                static_cast<unsigned long long>(p.value("served_demand_pages", 0)),
                static_cast<unsigned long long>(p.value("served_bulk_pages", 0)),
                static_cast<unsigned long long>(p.value("served_zero_pages", 0)));
  }
}

void printMigration(const ControlOptions& g, const json& m) {
  if (g.output == "json")
    std::printf("%s\n", m.dump(2).c_str());
  else
    printTable(m);
}

// Polls the migration until it ends, drawing `line`; the exit code says how it ended.
int follow(const ControlOptions& g, const std::string& id, int interval_ms, ProgressLine& line,
           json& last) {
  for (;;) {
    auto a = call(g, "GET", "/v1/migrations/" + id);
    if (a.rc != kExitOk) {
      line.finish();
      return a.rc;
    }
    last = a.body;
    line.update(last);
    const std::string state = last.value("state", "");
    if (isFinal(state)) {
      line.finish();
      if (!last.value("reason", "").empty())
        std::fprintf(stderr, "lazymig: %s %s: %s\n", id.c_str(), state.c_str(),
                     last.value("reason", "").c_str());
      return state == "completed" ? kExitOk : kExitFailed;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
  }
}

}  // namespace

int migrate(const ControlOptions& g, const MigrateOptions& o) {
  json body{{"id", o.id}, {"role", o.role}, {"token", o.token}, {"peer_identity", o.peer_identity}};
  if (o.role == "source") {
    body["memory"] = !o.snapshot_file.empty() ? json{{"snapshot_file", o.snapshot_file}}
                                              : json{{"handover_socket", o.handover_socket}};
  } else {
    body["source_address"] = o.source_address;
    if (!o.handshake_socket.empty()) body["handshake_socket"] = o.handshake_socket;
    if (o.vmm_pid) body["vmm_pid"] = *o.vmm_pid;
  }
  auto a = call(g, "POST", "/v1/migrations", body.dump());
  if (a.rc != kExitOk) return a.rc;
  if (!o.wait) {
    printMigration(g, a.body);
    return kExitOk;
  }
  // The live line goes to stderr, so stdout keeps only the final answer for scripts.
  ProgressLine line(stderr, ProgressLine::isTerminal(stderr), std::chrono::seconds(5));
  json last = a.body;
  int rc = follow(g, o.id, o.interval_ms, line, last);
  if (!last.is_null()) printMigration(g, last);
  return rc;
}

int status(const ControlOptions& g, const std::string& id, bool watch, int interval_ms) {
  if (!watch) {
    auto a = call(g, "GET", "/v1/migrations/" + id);
    if (a.rc == kExitOk) printMigration(g, a.body);
    return a.rc;
  }
  // --watch is the live view itself: every sample on stdout (redrawn on a terminal).
  ProgressLine line(stdout, ProgressLine::isTerminal(stdout), std::chrono::milliseconds(0));
  json last;
  int rc = follow(g, id, interval_ms, line, last);
  if (g.output == "json" && !last.is_null()) std::printf("%s\n", last.dump(2).c_str());
  return rc;
}

int list(const ControlOptions& g) {
  auto a = call(g, "GET", "/v1/migrations");
  if (a.rc != kExitOk) return a.rc;
  if (g.output == "json") {
    std::printf("%s\n", a.body.dump(2).c_str());
    return kExitOk;
  }
  std::printf("%-24s %-12s %-18s %10s %10s\n", "ID", "ROLE", "STATE", "PAGES", "TOTAL");
  for (const auto& m : a.body.value("migrations", json::array())) {
    const json p = m.value("progress", json::object());
    std::printf("%-24s %-12s %-18s %10llu %10llu\n", m.value("id", "").c_str(),
                m.value("role", "").c_str(), m.value("state", "").c_str(),
                static_cast<unsigned long long>(p.value("pages_installed", 0)),
                static_cast<unsigned long long>(p.value("pages_total", 0)));
  }
  return kExitOk;
}

int cancel(const ControlOptions& g, const std::string& id, bool force) {
  auto a = call(g, "DELETE", "/v1/migrations/" + id + (force ? "?force=true" : ""));
  if (a.rc == kExitOk) printMigration(g, a.body);
  return a.rc;
}

int agentInfo(const ControlOptions& g) {
  auto a = call(g, "GET", "/v1/agent");
  if (a.rc != kExitOk) return a.rc;
  if (g.output == "json") {
    std::printf("%s\n", a.body.dump(2).c_str());
    return kExitOk;
  }
  for (const auto& [key, value] : a.body.items()) {
    std::printf("%-18s %s\n", key.c_str(),
                value.is_string() ? value.get<std::string>().c_str() : value.dump().c_str());
  }
  return kExitOk;
}

int health(const ControlOptions& g, int timeout_ms) {
  auto r = clientFor(g, std::chrono::milliseconds(timeout_ms)).get("/healthz");
  if (!r) {
    std::printf("unreachable: %s\n", r.error().message().c_str());
    return r.error().code == Errc::kConfig || r.error().code == Errc::kInvalidArgument
               ? kExitUsage
               : kExitUnreachable;
  }
  auto j = json::parse(r->body, nullptr, false);
  if (r->status == 200 && j.is_object() && j.value("status", "") == "ok") {
    std::printf("healthy: %s answered /healthz ok\n", g.control.c_str());
    return kExitOk;
  }
  std::printf("unhealthy: %s answered /healthz with HTTP %d: %.200s\n", g.control.c_str(),
              r->status, r->body.c_str());
  return kExitFailed;
}

}  // namespace lazymig::cli

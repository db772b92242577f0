#include "cli/precopy_demo.h"

#include <signal.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string_view>
#include <thread>

#include "client/control_client.h"

namespace lazymig::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// How many live source vCPUs write while the rounds run (lazymig-testvm's default).
constexpr const char* kLiveSourceVcpus = "2";

void say(const DemoRun& run, const std::string& line) {
  if (run.options().verbose) std::fprintf(stderr, "demo: %s\n", line.c_str());
}

// The last line of a test VM's stdout that is a JSON object holding `key`.
std::optional<json> lastLineWith(const std::string& output, const char* key) {
  std::size_t end = output.size();
  while (end > 0) {
    const std::size_t start = output.rfind('\n', end - 1);
    const std::size_t from = start == std::string::npos ? 0 : start + 1;
    auto line = json::parse(output.substr(from, end - from), nullptr, false);
    if (line.is_object() && line.contains(key)) return line;
    if (start == std::string::npos) break;
    end = start;
  }
  return std::nullopt;
}

Status checkPrecopyMode(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return fail(Errc::kInvalidArgument, "--precopy",
                "'" + text + "': " + why + " (expected off, auto or 'rounds N')");
  };
  if (text == "off" || text == "auto") return {};
  constexpr std::string_view kRounds = "rounds ";
  if (!std::string_view(text).starts_with(kRounds)) return bad("unknown mode");
  const std::string_view number = std::string_view(text).substr(kRounds.size());
  unsigned n = 0;
  auto [end, err] = std::from_chars(number.data(), number.data() + number.size(), n);
  if (number.empty() || err != std::errc() || end != number.data() + number.size()) {
    return bad("N must be a whole number");
  }
  if (n < 1 || n > 1000) return bad("N must be from 1 to 1000");
  return {};
}

// The source agent's rounds as they finish, on stderr (the demo's progress while it waits): a
// round is done once a later one started, or all are once the source is ready to pause.
void tellRounds(const DemoRun& run, const json& precopy, std::size_t& told) {
  const json rounds = precopy.value("rounds", json::array());
  const bool all = precopy.value("state", "") != "rounds";
  for (; told < rounds.size() && (all || told + 1 < rounds.size()); ++told) {
    const json& r = rounds[told];
    std::string line = "pre-copy round " + std::to_string(r.value("round", 0)) + ": " +
                       std::to_string(r.value("pages_sent", std::uint64_t{0})) + " pages sent";
    if (told > 0) {
      line += ", the source VM wrote " +
              std::to_string(r.value("pages_written", std::uint64_t{0})) +
              " pages during the round before";
    }
    say(run, line);
  }
}

}  // namespace

Status checkDemoPrecopy(const DemoOptions& o) {
  if (auto ok = checkPrecopyMode(o.precopy); !ok) return ok;
  if (o.precopy_deadline_ms == 0) {
    return fail(Errc::kInvalidArgument, "--precopy-deadline-ms", "must be positive, got 0");
  }
  if (!demoPrecopy(o)) return {};
  if (o.memory != "anon" && o.memory != "memfd" && o.memory != "memfd-minor") {
    return fail(Errc::kInvalidArgument, "--precopy",
                std::string("needs --memory ") + kDemoPrecopyMemoryKinds +
                    " (the demo's live source VM), got " + o.memory);
  }
  if (o.balloon) return fail(Errc::kInvalidArgument, "--precopy", "contradicts --balloon");
  return {};
}

std::string demoSourceMemory(const DemoOptions& o) {
  return demoPrecopy(o) && o.memory == "anon" ? "memfd" : o.memory;
}

json demoPrecopySpec(const DemoOptions& o) {
  if (!demoPrecopy(o)) return json::object();
  return {{"precopy", o.precopy}, {"precopy_deadline_ms", o.precopy_deadline_ms}};
}

std::vector<std::string> liveSourceArgs(const DemoOptions& o, const std::string& stamps_path) {
  if (!demoPrecopy(o)) return {"--hold"};
  return {"--live",
          "--live-vcpus",
          kLiveSourceVcpus,
          "--live-writes-per-s",
          std::to_string(o.source_writes_per_s),
          "--stamps-file",
          stamps_path};
}

Status waitReadyToPause(DemoRun& run) {
  const auto deadline = Clock::now() + std::chrono::seconds(run.options().timeout_s);
  std::size_t told = 0;
  for (;;) {
    auto m = run.migration(Side::kSource);
    if (!m) return std::unexpected(m.error());
    const json precopy = m->value("precopy", json::object());
    tellRounds(run, precopy, told);
    const std::string precopy_state = precopy.value("state", "");
    if (precopy_state == "ready_to_pause") {
      say(run, "pre-copy: ready to pause (" + precopy.value("switch_reason", "") + ")");
      return {};
    }
    const std::string state = m->value("state", "");
    if (state == "failed" || state == "cancelled" || state == "completed" ||
        precopy_state == "off" || precopy_state == "switched") {
      return fail(Errc::kState, "source migration",
                  state + " without pre-copy rounds (precopy " + precopy.dump() +
                      "): " + m->value("reason", "") + "; see " + run.logPath(Side::kSource));
    }
    if (run.sourceVmExited()) {
      return fail(Errc::kState, "source test VM",
                  "exited during pre-copy; see " + run.dir() + "/source-vm.log");
    }
    if (Clock::now() > deadline) {
      return fail(Errc::kTimeout, "source migration",
                  "not ready to pause after " + std::to_string(run.options().timeout_s) +
                      " s: " + precopy.dump());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

Status pauseSourceAndSwitch(DemoRun& run) {
  run.signalSourceVm(SIGUSR1);
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  // The VM says it paused once its vCPUs stopped and its stamps are written.
  while (!lastLineWith(run.sourceVmOutput(), "paused")) {
    if (run.sourceVmExited() || Clock::now() > deadline) {
      return fail(Errc::kState, "source test VM",
                  "did not say it paused; see " + run.dir() + "/source-vm.log");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const std::string path = std::string("/v1/migrations/") + DemoRun::kMigrationId + "/paused";
  auto r = client::ControlClient(run.controlEndpoint(Side::kSource)).post(path, "");
  if (!r) return std::unexpected(r.error());
  if (r->status != 200) {
    return fail(Errc::kState, "source agent POST " + path,
                "HTTP " + std::to_string(r->status) + ": " + r->body);
  }
  say(run, "source VM paused; the source agent switched to post-copy");
  return {};
}

Status switchLiveSource(DemoRun& run) {
  if (auto ok = waitReadyToPause(run); !ok) return ok;
  return pauseSourceAndSwitch(run);
}

json precopyReportJson(const DemoOptions& o, const Result<json>& source, const json& destination,
                       const json& vm, const std::string& source_vm_output) {
  json out;
  // The destination VM resumes only after the source VM paused: every fault it takes comes
  // after the switch (a fault served from the staging included).
  out["demand_faults_after_switch"] =
      destination.value("progress", json::object()).value("demand_faults", std::uint64_t{0});
  const auto paused = lastLineWith(source_vm_output, "paused_unix_ms");
  const json view = vm.value("guest_view", json::object());
  out["downtime_ms"] = paused && view.contains("start_unix_ms")
                           ? json(std::round(view.value("start_unix_ms", 0.0) -
                                             paused->value("paused_unix_ms", 0.0)))
                           : json(nullptr);
  json precopy{{"mode", o.precopy}};
  if (demoPrecopy(o)) {
    const json src = source ? source->value("precopy", json::object()) : json::object();
    const json dst = destination.value("precopy", json::object());
    json pages = json::array();
    json durations = json::array();
    for (const json& r : src.value("rounds", json::array())) {
      pages.push_back(r.value("pages_sent", std::uint64_t{0}));
      durations.push_back(r.value("duration_ms", 0.0));
    }
    precopy.update(
        {{"rounds", src.value("round", 0)},
         {"pages_per_round", pages},
         {"round_duration_ms", durations},
         {"switch_reason", src.value("switch_reason", json(nullptr))},
         {"stale_pages", src.value("stale_pages", json(nullptr))},
         {"staged_pages", dst.value("staged_pages", json(nullptr))},
         {"installed_from_staging", dst.value("installed_from_staging", json(nullptr))},
         {"source_writes", paused ? paused->value("live_writes", json(nullptr)) : json()},
         {"source_live_seconds", paused ? paused->value("live_seconds", json(nullptr)) : json()}});
  }
  out["precopy"] = precopy;
  return out;
}

void printPrecopySummary(const json& r) {
  const json p = r.value("precopy", json::object());
  if (p.value("mode", "off") != "off") {
    std::string pages;
    const json per_round = p.value("pages_per_round", json::array());
    for (std::size_t i = 0; i < per_round.size(); ++i) {
      if (i == 6 && per_round.size() > 8) {
        pages += ", ... " + per_round.back().dump();
        break;
      }
      pages += (i ? ", " : "") + per_round[i].dump();
    }
    std::printf(
        "  pre-copy         %s: %d rounds (%s pages), ready to pause on %s; %s pages stale at "
        "the switch; the source vCPUs wrote %s times in %s s\n",
        p.value("mode", "").c_str(), p.value("rounds", 0), pages.c_str(),
        p.value("switch_reason", json()).is_string() ? p["switch_reason"].get<std::string>().c_str()
                                                     : "?",
        p.value("stale_pages", json()).dump().c_str(),
        p.value("source_writes", json()).dump().c_str(),
        p.value("source_live_seconds", json()).dump().c_str());
  }
  const json downtime = r.value("downtime_ms", json());
  std::printf(
      "  downtime         %s ms (source VM paused -> destination VM resumed); %s demand "
      "faults after the switch\n",
      downtime.is_number() ? downtime.dump().c_str() : "(not measured)",
      r.value("demand_faults_after_switch", json(0)).dump().c_str());
}

}  // namespace lazymig::cli

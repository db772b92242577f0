#include "cli/progress_line.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>

namespace lazymig::cli {
namespace {

// "4.2s", "42s", "3m07s", "1h05m"; "--" when unknown (no progress measured yet).
std::string eta(double seconds) {
  if (!(seconds >= 0) || seconds > 360000) return "--";
  char buf[32];
  if (seconds < 10) {
    std::snprintf(buf, sizeof buf, "%.1fs", seconds);
    return buf;
  }
  auto s = static_cast<long long>(seconds + 0.5);
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, s / 60 % 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%llds", s);
  return buf;
}

}  // namespace

bool ProgressLine::isTerminal(std::FILE* out) { return ::isatty(::fileno(out)) == 1; }

std::string ProgressLine::render(const nlohmann::json& m, Clock::time_point now) {
  const nlohmann::json p = m.value("progress", nlohmann::json::object());
  const auto total = p.value("pages_total", std::uint64_t{0});
  const auto done = p.value("pages_installed", std::uint64_t{0});
  const auto faults = p.value("demand_faults", std::uint64_t{0});
  const auto page_size = p.value("page_size", std::uint64_t{4096});
  double mib_s = m.value("throughput_mib_s", 0.0);
  double faults_s = 0;
  double pages_s = 0;
  if (previous_ && now > previous_->at && done >= previous_->pages) {
    double dt = std::chrono::duration<double>(now - previous_->at).count();
    pages_s = static_cast<double>(done - previous_->pages) / dt;
    mib_s = pages_s * static_cast<double>(page_size ? page_size : 4096) / (1 << 20);
    faults_s = static_cast<double>(faults - std::min(faults, previous_->faults)) / dt;
  }
  previous_ = Sample{now, done, faults};
  const std::string state = m.value("state", "");
  const double pct = total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 0;
  const double p99_ms =
      m.value("fault_latency_us", nlohmann::json::object()).value("p99", 0.0) / 1e3;
  const bool final = state == "completed" || state == "failed" || state == "cancelled";
  const double elapsed = m.value("elapsed_seconds", 0.0);
  std::string tail;
  if (final) {
    // The last sample moves nothing: the whole run's averages say more.
    mib_s = m.value("throughput_mib_s", mib_s);
    faults_s = elapsed > 0 ? static_cast<double>(faults) / elapsed : 0;
    tail = "took " + eta(elapsed);
  } else {
    tail = "ETA " +
           eta(pages_s > 0 ? static_cast<double>(total - std::min(total, done)) / pages_s : -1);
  }
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "%s %s: %llu/%llu pages (%.1f%%)  %.0f MiB/s  %.0f faults/s  fault p99 %.2f ms  %s",
                m.value("id", "").c_str(), state.c_str(), static_cast<unsigned long long>(done),
                static_cast<unsigned long long>(total), pct, mib_s, faults_s, p99_ms, tail.c_str());
  return buf;
}

void ProgressLine::update(const nlohmann::json& migration, Clock::time_point now) {
  std::string line = render(migration, now);
  const std::string state = migration.value("state", "");
  const bool final = state == "completed" || state == "failed" || state == "cancelled";
  if (terminal_) {
    // A line longer than the terminal wraps, and \r then redraws only its last part.
    winsize ws{};
    if (::ioctl(::fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 && line.size() >= ws.ws_col)
      line.resize(ws.ws_col - 1u);
    std::fprintf(out_, "\r\033[K%s", line.c_str());
    drawn_ = true;
  } else if (final ? !final_printed_ : !last_plain_ || now - *last_plain_ >= plain_every_) {
    // The end is printed at once, and once: the demo keeps sampling a finished migration
    // while its guest runs again for the baseline.
    std::fprintf(out_, "%s\n", line.c_str());
    last_plain_ = now;
    final_printed_ = final;
  }
  std::fflush(out_);
}

void ProgressLine::finish() {
  if (terminal_ && drawn_) std::fprintf(out_, "\n");
  drawn_ = false;
  std::fflush(out_);
}

}  // namespace lazymig::cli

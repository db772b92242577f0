#include "cli/demo_guest_view.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "cli/svg_plot.h"
#include "client/control_client.h"

namespace lazymig::cli {
namespace {

using Clock = std::chrono::system_clock;
using json = nlohmann::json;

// Accesses done by `ms` on a cumulative progress series [[ms, accesses], ...], interpolated.
double accessesAt(const json& progress, double ms) {
  double t0 = 0, n0 = 0;
  for (const auto& p : progress) {
    double t = p[0].get<double>(), n = p[1].get<double>();
    if (t >= ms) return t == t0 ? n : n0 + (n - n0) * (ms - t0) / (t - t0);
    t0 = t;
    n0 = n;
  }
  return n0;
}

double endOf(const json& progress) {
  return progress.empty() ? 0 : progress.back()[0].get<double>();
}

json rounded(double v) {
  return std::isfinite(v) ? json(std::round(v * 1000) / 1000) : json(nullptr);
}

// Pages per millisecond in buckets of `bucket_ms`: the plot's curve of a progress series.
std::vector<std::pair<double, double>> rateSeries(const json& progress, double bucket_ms) {
  std::vector<std::pair<double, double>> out;
  const double end = endOf(progress);
  for (double t = 0; t + bucket_ms <= end + 1e-9; t += bucket_ms) {
    double n = accessesAt(progress, t + bucket_ms) - accessesAt(progress, t);
    out.emplace_back((t + bucket_ms / 2) / 1000, n / bucket_ms);
  }
  return out;
}

}  // namespace

void MigrationSampler::start(const std::string& endpoint, const std::string& id,
                             std::chrono::milliseconds every) {
  stop_ = false;
  thread_ = std::thread([this, endpoint, id, every] {
    client::ControlClient c(endpoint, std::chrono::seconds(2));
    while (!stop_.load()) {
      auto r = c.get("/v1/migrations/" + id);
      const double now =
          std::chrono::duration<double, std::milli>(Clock::now().time_since_epoch()).count();
      if (r && r->status == 200) {
        auto j = json::parse(r->body, nullptr, false);
        if (j.is_object()) {
          json p = j.value("progress", json::object());
          samples_.push_back({now, p.value("demand_faults", std::uint64_t{0}),
                              p.value("bulk_pages", std::uint64_t{0})});
          const std::string state = j.value("state", "");
          if (state == "completed" || state == "failed" || state == "cancelled") return;
        }
      }
      std::this_thread::sleep_for(every);
    }
  });
}

std::vector<MigrationSample> MigrationSampler::stop() {
  if (thread_.joinable()) {
    stop_ = true;
    thread_.join();
  }
  return std::move(samples_);
}

json guestRateJson(const json& view) {
  const json progress = view.value("progress", json::array());
  const double end = endOf(progress);
  json out{{"unit", "pages/ms"}, {"before", nullptr}, {"during", nullptr}, {"after", nullptr}};
  if (end <= 0) return json{{"guest_rate", out}, {"degradation", nullptr}};
  const double completed = view.value("migration_completed_ms", end);
  const double window = std::min(completed, end);
  const double during = accessesAt(progress, window) / window;
  out["during"] = rounded(during);
  // Less than a few progress reports after completion says nothing about the rate.
  if (end - completed > 20) {
    out["after"] =
        rounded((accessesAt(progress, end) - accessesAt(progress, completed)) / (end - completed));
  }
  json degradation = nullptr;
  if (view.contains("baseline")) {
    const json& b = view["baseline"];
    const double base_ms = endOf(b.value("progress", json::array()));
    if (base_ms > 0) {
      const double before = b.value("accesses", 0.0) / base_ms;
      out["before"] = rounded(before);
      degradation = rounded(1 - during / before);
    }
  }
  return json{{"guest_rate", out}, {"degradation", degradation}};
}

void printGuestSummary(const json& r) {
  const std::string vcpus = r.value("vcpus", "threads");
  if (vcpus == "kvm") {
    std::printf(
        "  vCPUs            KVM (guest program in KVM_RUN, memslots %s); the guest checked "
        "%llu pages it read, %llu not as written\n",
        r.value("memslot_backing", "vmm-mapping").c_str(),
        static_cast<unsigned long long>(r.value("guest_checked_reads", 0)),
        static_cast<unsigned long long>(r.value("guest_mismatches", 0)));
  } else {
    const json why = r.value("vcpus_threads_because", json());
    std::printf("  vCPUs            host threads standing in (%s)\n",
                why.is_string() ? why.get<std::string>().c_str() : "no KVM");
  }
  const json rate = r.value("guest_rate", json::object());
  auto show = [&](const char* k) {
    const json v = rate.value(k, json());
    char b[32] = "-";
    if (v.is_number()) std::snprintf(b, sizeof b, "%.2f", v.get<double>());
    return std::string(b);
  };
  const json d = r.value("degradation", json());
  char lost[48] = "unknown (no baseline)";
  if (d.is_number()) std::snprintf(lost, sizeof lost, "%.0f%%", d.get<double>() * 100);
  std::printf(
      "  guest rate       %s pages/ms not migrating, %s during, %s after the migration; "
      "work lost to it %s\n",
      show("before").c_str(), show("during").c_str(), show("after").c_str(), lost);
  const json stall = r.value("vcpu_stall_share", json());
  if (stall.is_number()) {
    std::printf("  vCPU time        %.1f%% of it blocked in faults\n", stall.get<double>() * 100);
  }
}

Status writeGuestPlot(const std::string& path, const json& r, const json& view,
                      const std::vector<MigrationSample>& samples) {
  const json progress = view.value("progress", json::array());
  const json base = view.value("baseline", json::object()).value("progress", json::array());
  const double span = std::max(endOf(progress), endOf(base));
  const double bucket = std::max(10.0, span / 150);
  SvgPlot plot(std::string("lazymig demo: ") + r.value("memory", "") + ", " +
               std::to_string(r.value("size_bytes", std::uint64_t{0}) >> 20) + " MiB, " +
               r.value("pattern", "") + " pattern, " +
               (r.value("vcpus", "") == "kvm" ? "KVM vCPUs" : "threads standing in for vCPUs"));
  const double completed_s = view.value("migration_completed_ms", 0.0) / 1000;
  auto& guest = plot.panel("guest throughput (pages/ms)", 3);
  guest.line("not migrating", "#999999", rateSeries(base, bucket));
  guest.line("migrating", "#1f77b4", rateSeries(progress, bucket));
  guest.marker("migration completed", completed_s);
  std::vector<std::pair<double, double>> faults, bulk;
  const double start = view.value("start_unix_ms", 0.0);
  const double page_mib =
      static_cast<double>(r.value("page_size", std::uint64_t{4096})) / (1 << 20);
  for (std::size_t i = 1; i < samples.size(); ++i) {
    const double dt = (samples[i].unix_ms - samples[i - 1].unix_ms) / 1000;
    if (dt <= 0) continue;
    const double t = (samples[i].unix_ms + samples[i - 1].unix_ms) / 2000 - start / 1000;
    faults.emplace_back(
        t, static_cast<double>(samples[i].demand_faults - samples[i - 1].demand_faults) / dt);
    bulk.emplace_back(
        t, static_cast<double>(samples[i].bulk_pages - samples[i - 1].bulk_pages) * page_mib / dt);
  }
  auto& f = plot.panel("demand faults/s", 1);
  f.line("faults", "#d62728", faults);
  f.marker("", completed_s);
  auto& b = plot.panel("bulk stream MiB/s", 1);
  b.line("bulk", "#2ca02c", bulk);
  b.marker("", completed_s);
  return plot.write(path, "seconds since the destination guest started");
}

}  // namespace lazymig::cli

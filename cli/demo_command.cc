#include "cli/demo_command.h"

#include "cli/demo_guest_view.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <iterator>

#include "cli/demo.h"
#include "cli/precopy_demo.h"
#include "cli/progress_line.h"

namespace lazymig::cli {
namespace {

using nlohmann::json;

Result<std::uint64_t> parseSize(const std::string& v) {
  char* end = nullptr;
  double n = std::strtod(v.c_str(), &end);
  std::string unit = end;
  std::uint64_t mult = unit == "KiB"   ? 1ull << 10
                       : unit == "MiB" ? 1ull << 20
                       : unit == "GiB" ? 1ull << 30
                                       : 1;
  if (end == v.c_str() || n <= 0 || (mult == 1 && !unit.empty()))
    return fail(Errc::kInvalidArgument, "--size", "expected e.g. 256MiB or 4GiB, got '" + v + "'");
  return static_cast<std::uint64_t>(n * static_cast<double>(mult));
}

// Where the network-served faults' time went: p50/p99 of each phase, in the fault's order (the
// status's fault_phases_us, docs/performance.md).
void printFaultPhases(const json& phases) {
  if (phases.value("count", std::uint64_t{0}) == 0) return;
  std::string line;
  for (const char* name : {"destination_wait", "request_wire", "source_wait", "source_work",
                           "reply_wire", "install_wake"}) {
    const json p = phases.value(name, json::object());
    char part[96];
    std::snprintf(part, sizeof part, "%s%s %.0f/%.0f", line.empty() ? "" : ", ", name,
                  p.value("p50", 0.0), p.value("p99", 0.0));
    line += part;
  }
  const json seen = phases.value("source_wait_seen_by_source", json::object());
  std::printf(
      "  fault phases     p50/p99 us: %s (%llu faults timed; of source_wait the source saw "
      "%.0f/%.0f)\n",
      line.c_str(), static_cast<unsigned long long>(phases.value("count", std::uint64_t{0})),
      seen.value("p50", 0.0), seen.value("p99", 0.0));
  const json slowest = phases.value("slowest", json::array());
  if (!slowest.empty()) {
    const json& f = slowest.front();
    std::printf(
        "  slowest fault    %.0f us: destination_wait %.0f, wires %.0f, source_wait %.0f, "
        "source_work %.0f, install_wake %.0f\n",
        f.value("total", 0.0), f.value("destination_wait", 0.0),
        f.value("request_wire", 0.0) + f.value("reply_wire", 0.0), f.value("source_wait", 0.0),
        f.value("source_work", 0.0), f.value("install_wake", 0.0));
  }
}

void printSummary(const DemoOptions& o, const std::string& size_text, const json& r) {
  const json l = r.value("fault_latency_us", json::object());
  const json v = r.value("vcpu_access_latency_us", json::object());
  std::printf("lazymig demo: %s of %s memory, %s pattern, %u vCPUs\n", size_text.c_str(),
              o.memory.c_str(), o.pattern.c_str(), o.vcpus);
  // The agent counts pages of the handshake's size (2 MiB on hugetlbfs), the verifier 4 KiB.
  const std::uint64_t page_size = r.value("page_size", std::uint64_t{4096});
  std::printf(
      "  pages            %llu of %llu KiB (%llu on demand, %llu by the bulk stream, %llu zero "
      "markers)\n",
      static_cast<unsigned long long>(r.value("size_bytes", std::uint64_t{0}) / page_size),
      static_cast<unsigned long long>(page_size / 1024),
      static_cast<unsigned long long>(r.value("demand_pages", 0)),
      static_cast<unsigned long long>(r.value("bulk_pages", 0)),
      static_cast<unsigned long long>(r.value("zero_pages", 0)));
  std::printf("  demand faults    %llu; served in p50 %.0f us, p99 %.0f us, max %.0f us\n",
              static_cast<unsigned long long>(r.value("demand_faults", 0)), l.value("p50", 0.0),
              l.value("p99", 0.0), l.value("max", 0.0));
  std::printf("  vCPU stalls      p50 %.0f us, p99 %.0f us (accesses that faulted)\n",
              v.value("p50", 0.0), v.value("p99", 0.0));
  printFaultPhases(r.value("fault_phases_us", json::object()));
  // How the pages got into the guest: the memory kind as the destination VM built it, and the
  // path the destination agent populated it by.
  const json backing = r.value("guest_memfd_backing", json());
  const json path = r.value("population_path", json());
  std::string kind = r.value("memory", o.memory);
  if (backing.is_string()) kind += " (" + backing.get<std::string>() + ")";
  if (r.value("page_size", json()).is_number()) {
    kind += ", " + std::to_string(r.value("page_size", json()).get<std::uint64_t>() >> 10) +
            " KiB pages";
  }
  std::printf("  memory           %s; population path %s\n", kind.c_str(),
              path.is_string() && !path.get<std::string>().empty() ? path.get<std::string>().c_str()
                                                                   : "(not reported)");
  if (o.memory == "guest_memfd") {
    std::printf("  FaultRequests    %llu sent by vCPUs, %llu replies; %llu bitmap bits left set\n",
                static_cast<unsigned long long>(r.value("fault_requests", 0)),
                static_cast<unsigned long long>(r.value("fault_replies", 0)),
                static_cast<unsigned long long>(r.value("bitmap_bits_set", 0)));
  }
  printGuestSummary(r);
  printPrecopySummary(r);
  std::printf("  time             %.2f s, %.0f MiB/s\n", r.value("total_seconds", 0.0),
              r.value("throughput_mib_s", 0.0));
  const json per_gib = r.value("cpu_seconds_per_gib", json::object());
  auto figure = [&](const char* side) {
    const json seconds = per_gib.value(side, json());
    return seconds.is_number() ? seconds.get<double>() : 0.0;
  };
  std::printf("  CPU per GiB      source %.2f s, destination %.2f s (the agents' loop threads)\n",
              figure("source"), figure("destination"));
  std::printf("  verified         %s (%llu mismatches)\n",
              r.value("verified", false) ? "yes" : "NO",
              static_cast<unsigned long long>(r.value("mismatches", 0)));
}

// CLI11 reads "" as 0 and "-1" as 2^64-1 for an unsigned option: only digits are a count.
const CLI::Validator kWholeNumber(
    [](std::string& v) {
      return !v.empty() && v.find_first_not_of("0123456789") == std::string::npos
                 ? std::string()
                 : "expected a whole number, got '" + v + "'";
    },
    "", "whole number");

}  // namespace

DemoCommand::DemoCommand(CLI::App& app) {
  DemoOptions& o = options_;
  CLI::App* demo = command_ = app.add_subcommand(
      "demo", "migrate a test VM between two local agents and verify every byte");
  demo->footer(
      "Two agents start on this machine, each with its own certificate; lazymig-testvm fills "
      "guest memory with a known pattern, migrates it while a running KVM guest faults on it, and "
      "verifies every page. Progress shows on stderr (one live line on a terminal). The report "
      "is printed as a summary, and as one JSON line on stdout with --json (-o json) or when "
      "stdout is not a terminal. Exits 1 if any byte differs.\n");
  demo->add_option("--size", size_text_, "guest memory size, e.g. 256MiB, 4GiB")
      ->capture_default_str();
  demo->add_option("--memory", o.memory,
                   "guest memory kind; hugetlb kinds use 2 MiB pages and raise "
                   "/proc/sys/vm/nr_hugepages for the run if too few are free")
      ->check(CLI::IsMember({"anon", "memfd", "memfd-minor", "guest_memfd", "hugetlb",
                             "hugetlb-shared", "hugetlb-minor"}))
      ->capture_default_str();
  demo->add_option("--pattern", o.pattern, "how the vCPUs touch memory")
      ->check(CLI::IsMember({"sequential", "random", "hot", "write"}))
      ->capture_default_str();
  demo->add_option("--vcpus", o.vcpus, "the guest's vCPUs (KVM vCPUs, or host threads standing in)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  demo->add_option("--accesses", o.accesses, "accesses per vCPU")
      ->check(kWholeNumber)
      ->capture_default_str();
  demo->add_option("--regions", o.regions, "guest memory regions")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  demo->add_option("--zero-ratio", o.zero_ratio, "share of pages left zero")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  demo->add_option("--seed", o.seed, "pattern seed")->check(kWholeNumber)->capture_default_str();
  demo->add_option("--timeout-s", o.timeout_s, "give up after this many seconds")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();
  demo->add_flag("--balloon", o.balloon, "the source VM balloons part of its memory (anon only)");
  demo->add_flag("--keep", o.keep, "keep the working directory (logs, configs)");
  demo->add_flag("--no-uffd-register", o.no_uffd_register,
                 "guest_memfd: the destination VM registers no uffd range; faults go by "
                 "FaultRequest");
  demo->add_flag("--require-kvm", o.require_kvm,
                 "guest_memfd: fail instead of letting a memfd stand in without /dev/kvm");
  demo->add_flag("--memfd-standin", o.memfd_standin,
                 "guest_memfd: a memfd stands in even with KVM");
  // The guest's own view (the destination test VM's vCPUs: KVM wherever /dev/kvm runs a guest).
  demo->add_flag("--vcpus-as-threads", o.vcpus_as_threads,
                 "host threads stand in for the KVM vCPUs (what runs where /dev/kvm cannot run "
                 "a guest)");
  demo->add_option("--plot", o.plot,
                   "write FILE.svg: guest throughput over time, migrating and not, with the "
                   "demand fault rate and the bulk rate below")
      ->type_name("FILE.svg");
  // Pre-copy (docs/precopy.md): the source VM runs live and the demo pauses it, as an
  // orchestrator would, once the source agent's rounds are done.
  demo->add_option("--precopy", o.precopy,
                   "copy memory in rounds while the source VM runs, then post-copy: off, auto or "
                   "'rounds N' (the migration spec's precopy); not off, the source VM's vCPUs "
                   "write until the demo pauses it")
      ->type_name("MODE")
      ->capture_default_str();
  demo->add_option("--precopy-deadline-ms", o.precopy_deadline_ms,
                   "with --precopy: the source agent is ready to pause after this long at most")
      ->check(kWholeNumber)
      ->capture_default_str();
  demo->add_option("--source-writes-per-s", o.source_writes_per_s,
                   "with --precopy: pages each of the source VM's 2 vCPUs writes per second "
                   "(nine in ten into the hot set; 0: as fast as it can)")
      ->check(kWholeNumber)
      ->capture_default_str();
  demo->add_option("--extra-yaml", extra_yaml_file_,
                   "appended to both agents' configs (e.g. a migration: block)")
      ->check(CLI::ExistingFile)
      ->type_name("FILE");
}

bool DemoCommand::parsed() const { return command_->parsed(); }

int DemoCommand::run(bool json_output) {
  DemoOptions& o = options_;
  auto size = parseSize(size_text_);
  if (!size) {
    std::fprintf(stderr, "lazymig demo: %s\n", size.error().message().c_str());
    return 2;
  }
  o.size = *size;
  if (auto ok = checkDemoOptions(o); !ok) {
    std::fprintf(stderr, "lazymig demo: %s\n", ok.error().message().c_str());
    return 2;
  }
  if (!extra_yaml_file_.empty()) {
    std::ifstream in(extra_yaml_file_);
    o.extra_yaml.assign(std::istreambuf_iterator<char>(in), {});
  }
  ProgressLine line(stderr, ProgressLine::isTerminal(stderr), std::chrono::seconds(5));
  o.progress = [&line](const json& migration) { line.update(migration); };
  auto report = runDemo(o);
  line.finish();
  if (!report) return 1;
  printSummary(o, size_text_, *report);
  // Scripts and benchmarks read the report as the last stdout line; a person at a terminal
  // gets the summary alone unless they ask for the JSON.
  if (json_output || !ProgressLine::isTerminal(stdout)) std::printf("%s\n", report->dump().c_str());
  return report->value("verified", false) ? 0 : 1;
}

}  // namespace lazymig::cli

// lazymig: the command line for an agent's control API, and the demo.
#include <openssl/rand.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/tool_main.h"
#include "cli/demo.h"
#include "client/control_client.h"
#include "transport/pki.h"

using namespace lazymig;
using nlohmann::json;

namespace {

constexpr const char* kUsage =
    R"(usage: lazymig [--control ENDPOINT] [--json] [--token-file F] [--cacert F --cert F --key F] COMMAND [flags]

commands:
  migrate --id ID --role source|destination --token HEX --peer-identity SAN
          [--snapshot-file P | --handover-socket P]        (source)
          [--source-address HOST:PORT] [--handshake-socket P] [--vmm-pid N]   (destination)
  status ID [--watch [--interval-ms 500]]
  list
  cancel ID [--force]
  agent                     what the agent is and where it listens
  token                     print a fresh 256-bit migration token
  certs --dir D --node NAME --san SAN [--san SAN...] [--ca-name lazymig-ca]
  demo [--size 1GiB] [--memory KIND] [--pattern sequential|random|hot|write] [--vcpus 4]
       [--accesses 20000] [--regions 1] [--zero-ratio 0.25] [--balloon] [--keep] [--timeout-s 600]
       [--no-uffd-register] [--require-kvm | --memfd-standin]
       [--extra-yaml FILE]  (appended to both agents' configs, e.g. a migration: block)
       [--vcpus-as-threads] [--plot FILE.svg]
       KIND: anon (default), memfd, memfd-minor, guest_memfd, hugetlb, hugetlb-shared,
             hugetlb-minor
         anon and hugetlb migrate from a snapshot file, the others from the source VM's
         memory fd; hugetlb kinds use 2 MiB pages (--size a multiple of 2 MiB) and raise
         /proc/sys/vm/nr_hugepages for the run if too few are free (put back afterwards);
         guest_memfd takes a guest_memfd from /dev/kvm, or a memfd stands in without KVM
         (--require-kvm: fail instead; --memfd-standin: use the stand-in even with KVM,
         e.g. to see uffd faults beside FaultRequests). --balloon is for anon only.
       --no-uffd-register  guest_memfd: the destination VM registers no uffd range, as on
                           kernels that refuse uffd on a guest_memfd: faults go by FaultRequest
       The destination VM runs its guest on KVM vCPUs wherever /dev/kvm can run a guest
       (host threads stand in elsewhere, or with --vcpus-as-threads), then once more with all
       memory present: guest_rate (before = not migrating, during, after) and degradation.
       --plot FILE.svg     guest throughput over time, migrating and not, with the demand
                           fault rate and the bulk rate below

ENDPOINT is unix:/path, host:port or https://host:port (default: $LAZYMIG_CONTROL or
unix:/run/lazymig/control.sock). For https, --cacert is the CA of the agent's control
certificate and --cert/--key this client's certificate (control_tls in the agent's config).
)";

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "lazymig: %s\n\n%s", why.c_str(), kUsage);
  std::exit(2);
}

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> flags;
  bool has(const std::string& f) const { return flags.count(f) != 0; }
  std::string get(const std::string& f, const std::string& def = "") const {
    auto it = flags.find(f);
    return it == flags.end() || it->second.empty() ? def : it->second.back();
  }
  // A whole number from min to max, or `def` when the flag is absent; anything else is a
  // usage error naming the flag.
  std::int64_t integer(const std::string& f, std::int64_t def, std::int64_t min,
                       std::int64_t max) const {
    if (!has(f)) return def;
    const std::string v = get(f);
    std::int64_t n = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || end != v.data() + v.size() || n < min || n > max) {
      usage(f + ": expected a whole number from " + std::to_string(min) + " to " +
            std::to_string(max) + ", got '" + v + "'");
    }
    return n;
  }
  double fraction(const std::string& f, double def) const {
    if (!has(f)) return def;
    const std::string v = get(f);
    char* end = nullptr;
    double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !(d >= 0 && d <= 1)) {
      usage(f + ": expected a number from 0 to 1, got '" + v + "'");
    }
    return d;
  }
};

// Parses `--flag value` and `--switch` forms; the command decides which flags it accepts.
Args parse(int argc, char** argv, int from, const std::vector<std::string>& valued,
           const std::vector<std::string>& switches) {
  Args a;
  for (int i = from; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) != 0) {
      a.positional.push_back(s);
    } else if (std::find(switches.begin(), switches.end(), s) != switches.end()) {
      a.flags[s].push_back("1");
    } else if (std::find(valued.begin(), valued.end(), s) != valued.end()) {
      if (i + 1 >= argc) usage(s + " needs a value");
      a.flags[s].push_back(argv[++i]);
    } else {
      usage("unknown flag '" + s + "' for this command");
    }
  }
  return a;
}

struct Global {
  std::string control;
  bool json_out = false;
  std::string token;
  std::string cacert, cert, key;
};

int apiError(const client::HttpResponse& r) {
  auto j = json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("error")) {
    std::fprintf(stderr, "lazymig: %s: %s\n", j["error"].value("code", "error").c_str(),
                 j["error"].value("message", "").c_str());
  } else {
    std::fprintf(stderr, "lazymig: HTTP %d: %s\n", r.status, r.body.c_str());
  }
  return 1;
}

std::optional<json> request(const Global& g, const std::string& method, const std::string& path,
                            const std::string& body, int& rc) {
  client::ControlClient c(g.control);
  c.setBearerToken(g.token);
  c.setTls(g.cacert, g.cert, g.key);
  auto r = c.request(method, path, body);
  if (!r) {
    std::fprintf(stderr, "lazymig: %s\n", r.error().message().c_str());
    rc = 1;
    return std::nullopt;
  }
  if (r->status >= 300) {
    rc = apiError(*r);
    return std::nullopt;
  }
  rc = 0;
  return json::parse(r->body, nullptr, false);
}

void printMigration(const json& m) {
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

bool isFinal(const std::string& s) { return s == "completed" || s == "failed" || s == "cancelled"; }

int cmdStatus(const Global& g, int argc, char** argv, int i) {
  Args a = parse(argc, argv, i, {"--interval-ms"}, {"--watch"});
  if (a.positional.size() != 1) usage("status needs exactly one migration id");
  int rc = 0;
  if (!a.has("--watch")) {
    auto m = request(g, "GET", "/v1/migrations/" + a.positional[0], "", rc);
    if (!m) return rc;
    if (g.json_out)
      std::printf("%s\n", m->dump(2).c_str());
    else
      printMigration(*m);
    return 0;
  }
  auto interval = std::chrono::milliseconds(a.integer("--interval-ms", 500, 10, 3'600'000));
  bool tty = ::isatty(STDOUT_FILENO);
  for (;;) {
    auto m = request(g, "GET", "/v1/migrations/" + a.positional[0], "", rc);
    if (!m) return rc;
    const json p = m->value("progress", json::object());
    std::uint64_t total = p.value("pages_total", 0), done = p.value("pages_installed", 0);
    double frac = total ? static_cast<double>(done) / static_cast<double>(total) : 0;
    int filled = static_cast<int>(frac * 30);
    std::string bar = std::string(static_cast<std::size_t>(filled), '#') +
                      std::string(static_cast<std::size_t>(30 - filled), '-');
    std::string state = m->value("state", "");
    std::printf("%s[%s] %3.0f%% %llu/%llu pages  %.0f MiB/s  p99 %.2f ms  %s%s", tty ? "\r" : "",
                bar.c_str(), frac * 100, static_cast<unsigned long long>(done),
                static_cast<unsigned long long>(total), m->value("throughput_mib_s", 0.0),
                m->value("fault_latency_us", json::object()).value("p99", 0.0) / 1000,
                state.c_str(), tty ? "   " : "\n");
    std::fflush(stdout);
    if (isFinal(state)) {
      std::printf("\n");
      if (!m->value("reason", "").empty())
        std::printf("reason: %s\n", m->value("reason", "").c_str());
      return state == "completed" ? 0 : 1;
    }
    std::this_thread::sleep_for(interval);
  }
}

int cmdMigrate(const Global& g, int argc, char** argv, int i) {
  Args a = parse(argc, argv, i,
                 {"--id", "--role", "--token", "--peer-identity", "--snapshot-file",
                  "--handover-socket", "--source-address", "--handshake-socket", "--vmm-pid"},
                 {});
  for (const char* f : {"--id", "--role", "--token", "--peer-identity"}) {
    if (!a.has(f)) usage(std::string("migrate needs ") + f);
  }
  json body{{"id", a.get("--id")},
            {"role", a.get("--role")},
            {"token", a.get("--token")},
            {"peer_identity", a.get("--peer-identity")}};
  if (a.get("--role") == "source") {
    body["memory"] = a.has("--snapshot-file")
                         ? json{{"snapshot_file", a.get("--snapshot-file")}}
                         : json{{"handover_socket", a.get("--handover-socket")}};
  } else {
    body["source_address"] = a.get("--source-address");
    if (a.has("--handshake-socket")) body["handshake_socket"] = a.get("--handshake-socket");
    if (a.has("--vmm-pid")) body["vmm_pid"] = a.integer("--vmm-pid", 0, 1, INT32_MAX);
  }
  int rc = 0;
  auto m = request(g, "POST", "/v1/migrations", body.dump(), rc);
  if (!m) return rc;
  if (g.json_out)
    std::printf("%s\n", m->dump(2).c_str());
  else
    printMigration(*m);
  return 0;
}

int cmdList(const Global& g) {
  int rc = 0;
  auto r = request(g, "GET", "/v1/migrations", "", rc);
  if (!r) return rc;
  if (g.json_out) {
    std::printf("%s\n", r->dump(2).c_str());
    return 0;
  }
  std::printf("%-24s %-12s %-18s %10s %10s\n", "ID", "ROLE", "STATE", "PAGES", "TOTAL");
  for (const auto& m : r->value("migrations", json::array())) {
    const json p = m.value("progress", json::object());
    std::printf("%-24s %-12s %-18s %10llu %10llu\n", m.value("id", "").c_str(),
                m.value("role", "").c_str(), m.value("state", "").c_str(),
                static_cast<unsigned long long>(p.value("pages_installed", 0)),
                static_cast<unsigned long long>(p.value("pages_total", 0)));
  }
  return 0;
}

int cmdCerts(int argc, char** argv, int i) {
  Args a = parse(argc, argv, i, {"--dir", "--node", "--san", "--ca-name"}, {});
  if (!a.has("--dir") || !a.has("--node") || !a.has("--san"))
    usage("certs needs --dir, --node and --san");
  std::string dir = a.get("--dir"), ca_name = a.get("--ca-name", "lazymig-ca");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return std::fprintf(stderr, "lazymig: certs --dir %s: %s\n", dir.c_str(), ec.message().c_str()),
           1;
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);  // keys live here
  transport::PemFiles ca{dir + "/" + ca_name + ".crt", dir + "/" + ca_name + ".key"};
  if (::access(ca.cert_file.c_str(), R_OK) != 0) {
    auto made = transport::generateCa(dir, ca_name);
    if (!made) return std::fprintf(stderr, "lazymig: %s\n", made.error().message().c_str()), 1;
  }
  transport::LeafSpec spec;
  spec.common_name = a.get("--node");
  for (const auto& san : a.flags["--san"])
    (san.find("://") != std::string::npos ? spec.uris : spec.dns_names).push_back(san);
  auto leaf = transport::issueLeaf(ca, dir, a.get("--node"), spec);
  if (!leaf) return std::fprintf(stderr, "lazymig: %s\n", leaf.error().message().c_str()), 1;
  std::printf("%s\n%s\n", leaf->cert_file.c_str(), leaf->key_file.c_str());
  return 0;
}

std::uint64_t parseSize(const std::string& v) {
  char* end = nullptr;
  double n = std::strtod(v.c_str(), &end);
  std::string unit = end;
  std::uint64_t mult = unit == "KiB"   ? 1ull << 10
                       : unit == "MiB" ? 1ull << 20
                       : unit == "GiB" ? 1ull << 30
                                       : 1;
  if (end == v.c_str() || n <= 0 || (mult == 1 && !unit.empty()))
    usage("--size: expected e.g. 256MiB, got '" + v + "'");
  return static_cast<std::uint64_t>(n * static_cast<double>(mult));
}

int cmdDemo(int argc, char** argv, int i) {
  std::vector<std::string> valued = {"--size",     "--memory",    "--pattern",    "--vcpus",
                                     "--accesses", "--regions",   "--zero-ratio", "--timeout-s",
                                     "--seed",     "--extra-yaml"};
  std::vector<std::string> switches = {"--balloon", "--keep", "--no-uffd-register", "--require-kvm",
                                       "--memfd-standin"};
  valued.insert(valued.end(), std::begin(cli::kDemoGuestViewValued),
                std::end(cli::kDemoGuestViewValued));
  switches.insert(switches.end(), std::begin(cli::kDemoGuestViewSwitches),
                  std::end(cli::kDemoGuestViewSwitches));
  Args a = parse(argc, argv, i, valued, switches);
  cli::DemoOptions o;
  if (a.has("--size")) o.size = parseSize(a.get("--size"));
  o.memory = a.get("--memory", o.memory);
  o.pattern = a.get("--pattern", o.pattern);
  o.vcpus = static_cast<unsigned>(a.integer("--vcpus", 4, 1, 256));
  o.accesses = static_cast<std::uint64_t>(a.integer("--accesses", 20000, 0, INT64_MAX));
  o.regions = static_cast<unsigned>(a.integer("--regions", 1, 1, 1024));
  o.zero_ratio = a.fraction("--zero-ratio", 0.25);
  o.timeout_s = static_cast<int>(a.integer("--timeout-s", 600, 1, 86400));
  o.seed = static_cast<std::uint64_t>(a.integer("--seed", 42, 0, INT64_MAX));
  o.balloon = a.has("--balloon");
  o.no_uffd_register = a.has("--no-uffd-register");
  o.require_kvm = a.has("--require-kvm");
  o.memfd_standin = a.has("--memfd-standin");
  o.keep = a.has("--keep");
  for (const char* f : cli::kDemoGuestViewSwitches)
    if (a.has(f)) cli::applyGuestViewFlag(o, f, "");
  for (const char* f : cli::kDemoGuestViewValued)
    if (a.has(f)) cli::applyGuestViewFlag(o, f, a.get(f));
  if (auto ok = cli::checkDemoOptions(o); !ok) usage(ok.error().message());
  if (a.has("--extra-yaml")) {
    std::ifstream in(a.get("--extra-yaml"));
    if (!in) usage("--extra-yaml: cannot read " + a.get("--extra-yaml"));
    o.extra_yaml.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto report = cli::runDemo(o);
  if (!report) return 1;
  const json& r = *report;
  const json l = r.value("fault_latency_us", json::object());
  const json v = r.value("vcpu_access_latency_us", json::object());
  std::printf("lazymig demo: %s of %s memory, %s pattern, %u vCPUs\n",
              a.get("--size", "1GiB").c_str(), o.memory.c_str(), o.pattern.c_str(), o.vcpus);
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
  cli::printGuestSummary(r);
  std::printf("  time             %.2f s, %.0f MiB/s\n", r.value("total_seconds", 0.0),
              r.value("throughput_mib_s", 0.0));
  std::printf("  verified         %s (%llu mismatches)\n",
              r.value("verified", false) ? "yes" : "NO",
              static_cast<unsigned long long>(r.value("mismatches", 0)));
  std::printf("%s\n", r.dump().c_str());
  return r.value("verified", false) ? 0 : 1;
}

}  // namespace

static int run(int argc, char** argv) {
  Global g;
  const char* env = std::getenv("LAZYMIG_CONTROL");
  g.control = env ? env : "unix:/run/lazymig/control.sock";
  int i = 1;
  for (; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "--control" && i + 1 < argc)
      g.control = argv[++i];
    else if (s == "--json")
      g.json_out = true;
    else if (s == "--token-file" && i + 1 < argc) {
      std::ifstream in(argv[++i]);
      if (!in) usage(std::string("--token-file: cannot read ") + argv[i]);
      std::getline(in, g.token);
    } else if (s == "--cacert" && i + 1 < argc)
      g.cacert = argv[++i];
    else if (s == "--cert" && i + 1 < argc)
      g.cert = argv[++i];
    else if (s == "--key" && i + 1 < argc)
      g.key = argv[++i];
    else
      break;
  }
  if (i >= argc) usage("missing command");
  std::string cmd = argv[i++];
  int rc = 0;
  if (cmd == "help" || cmd == "--help" || cmd == "-h") return std::printf("%s", kUsage), 0;
  if (cmd == "demo") return cmdDemo(argc, argv, i);
  if (cmd == "certs") return cmdCerts(argc, argv, i);
  if (cmd == "token") {
    unsigned char b[32];
    if (RAND_bytes(b, sizeof b) != 1)
      return std::fprintf(stderr, "lazymig: no randomness for a token\n"), 1;
    for (auto c : b) std::printf("%02x", c);
    std::printf("\n");
    return 0;
  }
  if (cmd == "migrate") return cmdMigrate(g, argc, argv, i);
  if (cmd == "status") return cmdStatus(g, argc, argv, i);
  if (cmd == "list") return cmdList(g);
  if (cmd == "agent") {
    auto r = request(g, "GET", "/v1/agent", "", rc);
    if (!r) return rc;
    std::printf("%s\n", r->dump(2).c_str());
    return 0;
  }
  if (cmd == "cancel") {
    Args a = parse(argc, argv, i, {}, {"--force"});
    if (a.positional.size() != 1) usage("cancel needs exactly one migration id");
    auto r = request(g, "DELETE",
                     "/v1/migrations/" + a.positional[0] + (a.has("--force") ? "?force=true" : ""),
                     "", rc);
    if (!r) return rc;
    if (g.json_out)
      std::printf("%s\n", r->dump(2).c_str());
    else
      printMigration(*r);
    return 0;
  }
  usage("unknown command '" + cmd + "'");
}

int main(int argc, char** argv) {
  return lazymig::runToolMain("lazymig", 1, [&] { return run(argc, argv); });
}

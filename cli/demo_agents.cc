// The demo's two agents: their certificates, ports, configs, processes and control API calls.
#include <netinet/in.h>
#include <sys/socket.h>

#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "cli/demo.h"
#include "client/control_client.h"
#include "sys/unique_fd.h"
#include "transport/pki.h"

namespace lazymig::cli {
namespace {

const char* name(Side s) { return s == Side::kSource ? "source" : "destination"; }

// The low end of the kernel's ephemeral port range (net.ipv4.ip_local_port_range).
std::uint16_t ephemeralPortsStart() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  unsigned low = 0;
  if (!(in >> low) || low <= 2048 || low > 65535) return 32768;
  return static_cast<std::uint16_t>(low);
}

bool portIsFree(std::uint16_t port) {
  sys::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  return fd && ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
}

// Agents restarted by a test must come back on the same address the destination dials, so each
// gets a fixed port rather than port 0. It is drawn below the ephemeral range: a port from that
// range (what binding port 0 gives) can be taken as the local end of any outgoing connection --
// the other agent's dial, a parallel demo's -- between this check and the agent's bind.
Result<std::uint16_t> freePort() {
  const std::uint16_t high = ephemeralPortsStart();
  const std::uint16_t low = high > 12000 ? high - 12000 : 1024;
  std::mt19937 pick{std::random_device{}()};
  std::uniform_int_distribution<unsigned> in_range(low, high - 1u);
  for (int attempt = 0; attempt < 64; ++attempt) {
    auto port = static_cast<std::uint16_t>(in_range(pick));
    if (portIsFree(port)) return port;
  }
  return fail(Errc::kSystem, "demo",
              "no free loopback port below the ephemeral range (" + std::to_string(low) + "-" +
                  std::to_string(high - 1) + ") after 64 tries");
}

// The last lines of an agent's log: a start-up failure says its cause there.
std::string logTail(const std::string& path, std::size_t lines) {
  std::ifstream in(path);
  std::vector<std::string> tail;
  for (std::string line; std::getline(in, line);) {
    tail.push_back(line);
    if (tail.size() > lines) tail.erase(tail.begin());
  }
  std::string out;
  for (const auto& line : tail) out += (out.empty() ? "" : "\n") + line;
  return out;
}

bool addressWasTaken(const Error& e) {
  return e.message().find("Address already in use") != std::string::npos;
}

}  // namespace

Status DemoRun::startAgents() {
  for (Side s : {Side::kSource, Side::kDestination}) {
    // Another process may still bind the port between freePort() and the agent: pick again.
    for (int attempt = 1;; ++attempt) {
      auto port = freePort();
      if (!port) return std::unexpected(port.error());
      ports_[static_cast<int>(s)] = *port;
      if (auto ok = writeConfig(s); !ok) return std::unexpected(ok.error());
      auto ok = startAgent(s);
      if (ok) break;
      if (attempt == 3 || !addressWasTaken(ok.error())) return std::unexpected(ok.error());
      say(std::string(name(s)) + " agent: port " + std::to_string(*port) +
          " was taken before it bound it; trying another");
    }
  }
  return {};
}

Status DemoRun::writePki() {
  auto ca = transport::generateCa(dir_, "ca");
  if (!ca) return std::unexpected(ca.error());
  for (Side s : {Side::kSource, Side::kDestination}) {
    transport::LeafSpec spec;
    spec.common_name = name(s);
    spec.dns_names = {std::string(name(s)) + ".lazymig.demo"};
    spec.uris = {identity(s)};
    auto leaf = transport::issueLeaf(*ca, dir_, name(s), spec);
    if (!leaf) return std::unexpected(leaf.error());
  }
  return {};
}

std::string DemoRun::identity(Side s) {
  return std::string("spiffe://lazymig.demo/node/") + name(s);
}

std::string DemoRun::controlEndpoint(Side s) const {
  return "unix:" + dir_ + "/" + name(s) + "-control.sock";
}
std::string DemoRun::agentAddress(Side s) const {
  return "127.0.0.1:" + std::to_string(ports_[static_cast<int>(s)]);
}
std::string DemoRun::logPath(Side s) const { return dir_ + "/" + name(s) + ".log"; }

Status DemoRun::writeConfig(Side s) {
  std::ofstream out(dir_ + "/" + name(s) + ".yaml");
  out << "node_name: " << name(s) << "\n"
      << "listen:\n  agent: \"" << agentAddress(s) << "\"\n  control: \"" << controlEndpoint(s)
      << "\"\n  metrics: \"127.0.0.1:0\"\n"
      << "tls:\n  ca_file: " << dir_ << "/ca.crt\n  cert_file: " << dir_ << "/" << name(s)
      << ".crt\n  key_file: " << dir_ << "/" << name(s) << ".key\n"
      << "state_dir: " << dir_ << "/" << name(s) << "-state\n"
      << "handshake_dir: " << dir_ << "/" << name(s) << "-vmm\n"
      << options_.extra_yaml << "\n";
  if (!out) return fail(Errc::kSystem, "demo", "cannot write the agent config in " + dir_);
  return {};
}

Status DemoRun::startAgent(Side s) {
  auto& slot = agents_[static_cast<int>(s)];
  slot.reset();
  std::vector<std::string> argv = options_.agent_prefix;
  argv.insert(argv.end(),
              {options_.bindir + "/lazymig-agent", "--config", dir_ + "/" + name(s) + ".yaml"});
  auto child = ChildProcess::spawn(argv, logPath(s));
  if (!child) return std::unexpected(child.error());
  slot.emplace(std::move(*child));
  client::ControlClient c(controlEndpoint(s), std::chrono::seconds(1));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = c.get("/readyz");
    if (r && r->status == 200) return {};
    if (auto st = slot->wait(std::chrono::milliseconds(20))) {
      return fail(Errc::kState, std::string(name(s)) + " agent",
                  "exited at start-up (" + describeStatus(*st) + "); see " + logPath(s) +
                      ", which ends:\n" + logTail(logPath(s), 3));
    }
  }
  return fail(Errc::kTimeout, std::string(name(s)) + " agent",
              "not ready after 15 s; see " + logPath(s));
}

void DemoRun::signalAgent(Side s, int sig) const {
  if (const auto& slot = agents_[static_cast<int>(s)]) slot->signal(sig);
}

pid_t DemoRun::agentPid(Side s) const {
  const auto& slot = agents_[static_cast<int>(s)];
  return slot ? slot->pid() : -1;
}

void DemoRun::killAgent(Side s, int sig) {
  auto& slot = agents_[static_cast<int>(s)];
  if (!slot) return;
  slot->signal(sig);
  slot->wait(std::chrono::seconds(30));
}

Result<nlohmann::json> DemoRun::call(Side s, const std::string& method, const std::string& path,
                                     const std::string& body) const {
  client::ControlClient c(controlEndpoint(s));
  auto r = c.request(method, path, body);
  if (!r) return std::unexpected(r.error());
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (r->status >= 300 || j.is_discarded()) {
    return fail(Errc::kState, std::string(name(s)) + " agent " + method + " " + path,
                "HTTP " + std::to_string(r->status) + ": " + r->body);
  }
  return j;
}

}  // namespace lazymig::cli

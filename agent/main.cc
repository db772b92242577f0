// lazymig-agent: the per-host daemon. `lazymig-agent --config /etc/lazymig/lazymig.yaml`
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "agent/agent.h"
#include "base/log.h"
#include "config/config.h"

namespace {

// How long an orderly stop may take after SIGTERM (Kubernetes sends SIGKILL after 30 s).
constexpr std::chrono::seconds kStopDeadline{20};

constexpr const char* kUsage =
    "usage: lazymig-agent --config FILE [--log-level debug|info|warn|error]\n"
    "       lazymig-agent --check-config FILE   (validate and exit)\n"
    "       lazymig-agent --version\n";

int run(const std::string& config_path, const std::string& log_level, bool check_only) {
  auto cfg = lazymig::config::loadConfig(config_path);
  if (!cfg) {
    std::fprintf(stderr, "lazymig-agent: %s\n", cfg.error().message().c_str());
    return 2;
  }
  if (!log_level.empty()) cfg->log_level = log_level;
  if (check_only) {
    std::printf("%s: ok\n", config_path.c_str());
    return 0;
  }
  // Every thread the agent starts inherits this mask, so the signals reach only sigwait.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto agent = lazymig::agent::Agent::start(std::move(*cfg));
  if (!agent) {
    lazymig::log::root().error("agent failed to start", {{"error", agent.error().message()}});
    return 1;
  }
  for (;;) {
    int sig = 0;
    sigwait(&set, &sig);
    if (sig == SIGHUP) {
      (void)(*agent)->reloadCertificates();  // logs what happened either way
      continue;
    }
    lazymig::log::root().info("signal received, stopping", {{"signal", strsignal(sig)}});
    break;
  }
  // SIGTERM must end the process whatever a migration's threads are doing: stop() joins them,
  // and a thread stuck in the kernel would keep the agent alive forever. Every record is
  // already durable (RocksDB's log), so an agent cut short here loses nothing that a restart
  // does not recover. A second SIGTERM or SIGINT cuts it short at once.
  std::thread([set] {
    for (;;) {
      timespec deadline{kStopDeadline.count(), 0};
      int again = sigtimedwait(&set, nullptr, &deadline);
      if (again == SIGHUP) continue;
      lazymig::log::root().error(
          "the agent did not stop in time; exiting without an orderly stop",
          {{"deadline_s", static_cast<std::int64_t>(kStopDeadline.count())},
           {"cause", again > 0 ? std::string(strsignal(again)) : std::string("deadline")}});
      std::_Exit(1);
    }
  }).detach();
  (*agent)->stop();
  lazymig::log::root().info("agent stopped");
  // Everything that needs an orderly end (migrations, loops, RocksDB) ended in stop(); the
  // metrics exposer's web server takes over a second to join its threads for nothing.
  std::_Exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  std::string log_level;
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "lazymig-agent: %s needs a value\n%s", flag, kUsage);
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--config")
      config_path = value("--config");
    else if (arg == "--check-config") {
      config_path = value("--check-config");
      check_only = true;
    } else if (arg == "--log-level") {
      log_level = value("--log-level");
      if (!lazymig::log::parseLevel(log_level)) {
        std::fprintf(stderr, "lazymig-agent: --log-level: unknown level '%s'\n", log_level.c_str());
        return 2;
      }
    } else if (arg == "--version") {
      std::printf("lazymig-agent 0.1.0\n");
      return 0;
    } else if (arg == "--help" || arg == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else {
      std::fprintf(stderr, "lazymig-agent: unknown argument '%s'\n%s", arg.c_str(), kUsage);
      return 2;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "lazymig-agent: --config is required\n%s", kUsage);
    return 2;
  }
  return run(config_path, log_level, check_only);
}

// lazymig-agent: the per-host daemon. `lazymig-agent --config /etc/lazymig/lazymig.yaml`
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>

#include "agent/daemon/agent.h"
#include "base/log.h"
#include "base/tool_main.h"
#include "base/version.h"
#include "cli/cli_docs.h"
#include "config/config.h"

namespace {

// How long an orderly stop may take after SIGTERM (Kubernetes sends SIGKILL after 30 s).
constexpr std::chrono::seconds kStopDeadline{20};

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

// Flags are CLI11 definitions, so --help, the man page and the completions agree
// (cli/cli_docs.h; the build runs --generate).
int parseAndRun(int argc, char** argv) {
  CLI::App app{"lazymig agent: serves lazy (post-copy) live migrations on this host",
               "lazymig-agent"};
  app.set_version_flag("--version",
                       std::string("lazymig-agent ") + std::string(lazymig::versionString()));
  std::string config_path, check_path, log_level, generate_kind;
  auto* config = app.add_option("--config", config_path, "the agent's YAML config")
                     ->check(CLI::ExistingFile)
                     ->type_name("FILE");
  auto* check =
      app.add_option("--check-config", check_path, "validate this config and exit (0 valid, 2 not)")
          ->check(CLI::ExistingFile)
          ->type_name("FILE")
          ->excludes(config);
  app.add_option("--log-level", log_level, "overrides log_level of the config")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
  app.add_option("--generate", generate_kind, "print the man page or a completion script")
      ->check(CLI::IsMember(lazymig::cli::generatedKinds()))
      ->group("");
  app.footer(
      "Exit status: 0 stopped on SIGTERM/SIGINT (or --check-config: valid), 1 could not start, "
      "2 usage or config error. SIGHUP reloads the certificates.\n");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (!generate_kind.empty()) {
    lazymig::cli::printGenerated(
        app, generate_kind, std::string(lazymig::versionString()),
        {{"EXIT STATUS",
          "  0  stopped on SIGTERM or SIGINT; --check-config: the config is valid\n"
          "  1  the agent could not start (see its log)\n"
          "  2  usage error, or the config is invalid (the message names the key)"},
         {"SIGNALS", "SIGTERM, SIGINT: stop. SIGHUP: reload the certificates."},
         {"SEE ALSO", "lazymig(1); config/lazymig.example.yaml in the lazymig sources"}});
    return 0;
  }
  if (check->count() > 0) return run(check_path, log_level, true);
  if (config->count() == 0) {
    std::fprintf(stderr,
                 "lazymig-agent: --config is required\nRun with --help for more information.\n");
    return 2;
  }
  return run(config_path, log_level, false);
}

}  // namespace

int main(int argc, char** argv) {
  return lazymig::runToolMain("lazymig-agent", 1, [&] { return parseAndRun(argc, argv); });
}

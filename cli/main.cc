// lazymig: the command line for an agent's control API, and the demo.
//
// The commands, their options and help texts are CLI11 definitions (buildApp); the man page
// and the shell completions are generated from the same definitions (cli/cli_docs.h).
#include <openssl/rand.h>

#include <CLI/CLI.hpp>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "base/tool_main.h"
#include "base/version.h"
#include "cli/cli_docs.h"
#include "cli/control_commands.h"
#include "cli/demo_command.h"
#include "transport/pki.h"

using namespace lazymig;
using namespace lazymig::cli;

namespace {

constexpr const char* kDefaultControl = "unix:/run/lazymig/control.sock";

const std::vector<ManSection>& manSections() {
  static const std::vector<ManSection> sections{
      {"EXIT STATUS",
       "  0  the command did what was asked (health: the agent is healthy)\n"
       "  1  the agent answered with an error, the migration ended failed or cancelled, the "
       "demo found a mismatch (health: the agent answered unhealthy)\n"
       "  2  usage error: an unknown command or option, a missing or malformed value\n"
       "  3  the agent could not be reached (not running, wrong --control, TLS refused)"},
      {"ENVIRONMENT",
       "LAZYMIG_CONTROL\n"
       "  the control endpoint when --control is not given (default "
       "unix:/run/lazymig/control.sock)"},
      {"SEE ALSO",
       "lazymig-agent(1); docs/control-api.md and docs/openapi.yaml in the lazymig sources"}};
  return sections;
}

std::string usageError(const CLI::App* app, const CLI::Error& e) {
  return app->get_name() + ": " + e.what() + "\nRun `" + app->get_name() + " --help` (or `" +
         app->get_name() + " COMMAND --help`) for the options.\n";
}

int makeToken() {
  unsigned char b[32];
  if (RAND_bytes(b, sizeof b) != 1)
    return std::fprintf(stderr, "lazymig: no randomness for a token\n"), kExitFailed;
  for (auto c : b) std::printf("%02x", c);
  std::printf("\n");
  return kExitOk;
}

struct CertsOptions {
  std::string dir, node, ca_name = "lazymig-ca";
  std::vector<std::string> sans;
};

int makeCerts(const CertsOptions& o) {
  std::error_code ec;
  std::filesystem::create_directories(o.dir, ec);
  if (ec) {
    std::fprintf(stderr, "lazymig: certs --dir %s: %s\n", o.dir.c_str(), ec.message().c_str());
    return kExitFailed;
  }
  std::filesystem::permissions(o.dir, std::filesystem::perms::owner_all, ec);  // keys live here
  transport::PemFiles ca{o.dir + "/" + o.ca_name + ".crt", o.dir + "/" + o.ca_name + ".key"};
  if (!std::filesystem::exists(ca.cert_file)) {
    auto made = transport::generateCa(o.dir, o.ca_name);
    if (!made) return std::fprintf(stderr, "lazymig: %s\n", made.error().message().c_str()), 1;
  }
  transport::LeafSpec spec;
  spec.common_name = o.node;
  for (const auto& san : o.sans)
    (san.find("://") != std::string::npos ? spec.uris : spec.dns_names).push_back(san);
  auto leaf = transport::issueLeaf(ca, o.dir, o.node, spec);
  if (!leaf) return std::fprintf(stderr, "lazymig: %s\n", leaf.error().message().c_str()), 1;
  std::printf("%s\n%s\n", leaf->cert_file.c_str(), leaf->key_file.c_str());
  return kExitOk;
}

// Every option the command line has, and where each lands.
struct Cli {
  CLI::App app{"lazy (post-copy) live migration: drive a lazymig agent's control API", "lazymig"};
  ControlOptions control;
  bool json = false;
  MigrateOptions migrate;
  std::string id;
  bool watch = false, force = false;
  int interval_ms = 500;
  int health_timeout_ms = 2000;
  CertsOptions certs;
  std::string generate_kind;
  CLI::App *migrate_cmd, *status_cmd, *list_cmd, *cancel_cmd, *agent_cmd, *health_cmd, *token_cmd,
      *certs_cmd, *generate_cmd;
  std::optional<DemoCommand> demo;

  Cli();
  int run();
};

Cli::Cli() {
  app.set_version_flag("--version", std::string("lazymig ") + std::string(versionString()));
  app.require_subcommand(1);
  app.failure_message(usageError);
  // Global options are accepted after the command too (`lazymig list -o json`).
  app.fallthrough();
  app.footer(
      "Run `lazymig COMMAND --help` for a command's options. Exit status: 0 done, 1 the "
      "agent answered with an error or the migration failed, 2 usage error, 3 the agent "
      "could not be reached.\n");
  app.add_option("--control", control.control,
                 "the agent's control endpoint: unix:/path, host:port or https://host:port")
      ->envname("LAZYMIG_CONTROL")
      ->type_name("ENDPOINT");
  app.add_option("-o,--output", control.output,
                 "output format of list, status, migrate, cancel, agent")
      ->check(CLI::IsMember({"table", "json"}))
      ->capture_default_str();
  app.add_flag("--json", json, "the same as -o json");
  app.add_option("--token-file", control.token_file,
                 "a file whose first line is the agent's bearer token (control_token_file)")
      ->check(CLI::ExistingFile)
      ->type_name("FILE");
  app.add_option("--cacert", control.cacert, "https: the CA of the agent's control certificate")
      ->check(CLI::ExistingFile)
      ->type_name("FILE");
  app.add_option("--cert", control.cert, "https: this client's certificate")
      ->check(CLI::ExistingFile)
      ->type_name("FILE");
  app.add_option("--key", control.key, "https: this client's private key")
      ->check(CLI::ExistingFile)
      ->type_name("FILE");

  migrate_cmd = app.add_subcommand("migrate", "create a migration on this agent (one side of it)");
  MigrateOptions& m = migrate;
  migrate_cmd->add_option("--id", m.id, "the migration's id, the same on both agents")->required();
  migrate_cmd->add_option("--role", m.role, "this agent's side")
      ->required()
      ->check(CLI::IsMember({"source", "destination"}));
  migrate_cmd->add_option("--token", m.token, "the one-time migration token (lazymig token)")
      ->required();
  migrate_cmd
      ->add_option("--peer-identity", m.peer_identity,
                   "the SAN the other agent's certificate must carry")
      ->required();
  migrate_cmd->add_option("--snapshot-file", m.snapshot_file, "source: the snapshot memory file")
      ->type_name("FILE");
  migrate_cmd
      ->add_option("--handover-socket", m.handover_socket,
                   "source: where the paused VMM hands over its memory fd")
      ->type_name("PATH");
  migrate_cmd->add_option("--source-address", m.source_address,
                          "destination: the source agent, HOST:PORT");
  migrate_cmd
      ->add_option("--handshake-socket", m.handshake_socket,
                   "destination: where the VMM connects with its uffd")
      ->type_name("PATH");
  migrate_cmd->add_option("--vmm-pid", m.vmm_pid, "destination: the VMM's process id")
      ->check(CLI::Range(1, INT_MAX));
  migrate_cmd->add_flag("--wait", m.wait,
                        "follow the migration to its end with a live progress line on stderr; "
                        "exit 1 unless it completes");
  migrate_cmd->add_option("--interval-ms", m.interval_ms, "--wait: how often to ask")
      ->check(CLI::Range(10, 3'600'000))
      ->capture_default_str();

  status_cmd = app.add_subcommand("status", "show one migration");
  status_cmd->add_option("id", id, "the migration's id")->required();
  status_cmd->add_flag("--watch", watch, "follow it to its end, one progress line per sample");
  status_cmd->add_option("--interval-ms", interval_ms, "--watch: how often to ask")
      ->check(CLI::Range(10, 3'600'000))
      ->capture_default_str();

  list_cmd =
      app.add_subcommand("list", "list the migrations this agent knows, running and finished");

  cancel_cmd = app.add_subcommand("cancel", "cancel a migration");
  cancel_cmd->add_option("id", id, "the migration's id")->required();
  cancel_cmd->add_flag("--force", force,
                       "also after the guest may have run on the destination (loses its writes)");

  agent_cmd = app.add_subcommand("agent", "what the agent is (node, version) and where it listens");

  health_cmd = app.add_subcommand(
      "health", "ask the agent's /healthz: exit 0 healthy, 1 unhealthy, 3 unreachable");
  health_cmd->add_option("--timeout-ms", health_timeout_ms, "give up after this long")
      ->check(CLI::Range(1, 3'600'000))
      ->capture_default_str();

  token_cmd = app.add_subcommand("token", "print a fresh 256-bit migration token");

  certs_cmd = app.add_subcommand(
      "certs", "make a CA (once) and a leaf certificate for an agent or a client");
  certs_cmd->add_option("--dir", certs.dir, "where the CA and the leaf files go")
      ->required()
      ->type_name("DIR");
  certs_cmd->add_option("--node", certs.node, "the leaf's name (its common name and file name)")
      ->required();
  certs_cmd->add_option("--san", certs.sans, "a DNS name or URI SAN (repeatable)")->required();
  certs_cmd->add_option("--ca-name", certs.ca_name, "the CA's file name")->capture_default_str();

  demo.emplace(app);

  // Hidden: the build writes the man page and the completions with it.
  generate_cmd = app.add_subcommand("__generate", "print the man page or a completion script");
  generate_cmd->group("");
  generate_cmd->add_option("kind", generate_kind, "man, bash or zsh")
      ->required()
      ->check(CLI::IsMember(generatedKinds()));

  for (CLI::App* sub : app.get_subcommands({})) sub->fallthrough();
}

int Cli::run() {
  if (json) control.output = "json";
  const char* env = std::getenv("LAZYMIG_CONTROL");
  if (control.control.empty()) {
    control.control = kDefaultControl;
    control.control_source = "the default";
  } else {
    control.control_source =
        env != nullptr && control.control == env ? "from LAZYMIG_CONTROL" : "from --control";
  }
  if (generate_cmd->parsed()) {
    return printGenerated(app, generate_kind, std::string(versionString()), manSections()) ? 0 : 2;
  }
  if (demo->parsed()) return demo->run(control.output == "json");
  if (token_cmd->parsed()) return makeToken();
  if (certs_cmd->parsed()) return makeCerts(certs);
  if (migrate_cmd->parsed()) return cli::migrate(control, migrate);
  if (status_cmd->parsed()) return status(control, id, watch, interval_ms);
  if (list_cmd->parsed()) return list(control);
  if (cancel_cmd->parsed()) return cancel(control, id, force);
  if (agent_cmd->parsed()) return agentInfo(control);
  if (health_cmd->parsed()) return health(control, health_timeout_ms);
  return kExitUsage;
}

int parseAndRun(int argc, char** argv) {
  Cli cli;
  try {
    cli.app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are "errors" that exit 0; every real one is a usage error.
    return cli.app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  return cli.run();
}

}  // namespace

int main(int argc, char** argv) {
  return runToolMain("lazymig", 1, [&] { return parseAndRun(argc, argv); });
}

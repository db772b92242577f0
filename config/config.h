// The agent's YAML config (config/lazymig.example.yaml documents every key). Every error
// names the file, the full key path and the line; yaml-cpp's exceptions never leave config/.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace lazymig::config {

struct TlsConfig {
  std::string ca_file, cert_file, key_file;
};

struct ReconnectConfig {
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5000};
  std::chrono::seconds give_up_after{120};
};

struct MigrationDefaults {
  std::uint32_t bulk_batch_pages = 64;         // pages per bulk PageData frame (1..1024)
  std::uint32_t bulk_window_bytes_kib = 4096;  // bulk output kept queued per connection
  std::uint32_t bulk_rate_limit_mib_s = 0;     // cap on the bulk stream per migration; 0 = none
  // Nice value of the destination's fault thread (-20..19; 0: as the agent's other threads).
  // Lower than the bulk work so that a demand reply never waits for the CPU behind it.
  int fault_thread_nice = 0;
  // Nice value of a source migration's urgent thread, which serves demand pages (-20..19; 0: as
  // the agent's other threads). Lower than the peer loop's bulk work, it answers first.
  int source_urgent_thread_nice = 0;
  std::chrono::milliseconds checkpoint_interval{50};
  std::chrono::milliseconds stall_timeout{5000};
  std::chrono::milliseconds handshake_timeout{10000};
  ReconnectConfig reconnect;
};

struct HandshakeConfig {
  std::vector<uid_t> allowed_uids;  // empty: any
  std::vector<gid_t> allowed_gids;  // empty: any
  unsigned socket_mode = 0600;
};

struct Config {
  std::string node_name;
  std::string agent_listen = "0.0.0.0:7443";
  std::string control_listen = "unix:/run/lazymig/control.sock";
  std::string metrics_listen = "127.0.0.1:9464";  // "" or "off" disables
  TlsConfig tls;
  std::string state_dir = "/var/lib/lazymig";
  std::string handshake_dir = "/run/lazymig/vmm";
  std::string log_level = "info";
  std::string log_format = "logfmt";  // logfmt | json
  std::string control_token_file;
  // HTTPS with client certificates on a TCP control address: clients must present a
  // certificate from client_ca_file. Empty cert_file: plain HTTP.
  struct ControlTls {
    std::string cert_file, key_file, client_ca_file;
  } control_tls;
  MigrationDefaults migration;
  HandshakeConfig handshake;
};

// Parses YAML text; `source` names the file in errors. Does not touch the filesystem.
Result<Config> parseConfig(std::string_view yaml_text, const std::string& source = "<config>");
// Reads and parses the file, then checks that the files it names exist and are readable.
Result<Config> loadConfig(const std::string& path);

}  // namespace lazymig::config

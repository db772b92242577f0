#include "config/config.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

namespace lazymig::config {
namespace {

const std::string kMinimal = "node_name: a\ntls: {ca_file: /c, cert_file: /d, key_file: /e}\n";

std::string errorOf(const std::string& yaml) {
  auto r = parseConfig(yaml, "t.yaml");
  EXPECT_FALSE(r) << yaml;
  return r ? "" : r.error().message();
}

TEST(Config, ExampleFileParses) {
  std::ifstream in(LAZYMIG_EXAMPLE_CONFIG);
  std::stringstream text;
  text << in.rdbuf();
  auto c = parseConfig(text.str(), "lazymig.example.yaml");
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->node_name, "node-a");
  EXPECT_EQ(c->migration.bulk_batch_pages, 64u);
}

TEST(Config, MinimalConfigGetsDefaults) {
  auto c = parseConfig(kMinimal);
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->agent_listen, "0.0.0.0:7443");
  EXPECT_EQ(c->control_listen, "unix:/run/lazymig/control.sock");
  EXPECT_EQ(c->migration.stall_timeout, std::chrono::milliseconds(5000));
  EXPECT_EQ(c->handshake.socket_mode, 0600u);
  EXPECT_EQ(c->migration.fault_thread_nice, 0);
  EXPECT_EQ(c->migration.source_urgent_thread_nice, 0);
}

TEST(Config, EachBadKeyIsNamedWithItsLine) {
  struct Case {
    std::string yaml, expect;
  };
  std::vector<Case> cases = {
      {"", "empty"},
      {"- a\n- b\n", "(root)"},
      {"node_name: [\n", "invalid YAML"},
      {kMinimal + "colour: red\n", "key 'colour' (line 3): unknown key"},
      {kMinimal + "stat_dir: /x\n", "did you mean 'state_dir'"},
      {"tls: {ca_file: /c, cert_file: /d, key_file: /e}\n", "key 'node_name'"},
      {"node_name: a\n", "key 'tls'"},
      {"node_name: a\ntls: {ca_file: /c, cert_file: /d}\n", "key 'tls.key_file'"},
      {kMinimal + "migration:\n  bulk_batch_pages: 0\n",
       "key 'migration.bulk_batch_pages' (line 4): must be an integer from 1 to 1024, got 0"},
      {kMinimal + "migration:\n  bulk_batch_pages: lots\n", "got 'lots'"},
      {kMinimal + "migration:\n  reconnect:\n    give_up_after_s: -1\n",
       "key 'migration.reconnect.give_up_after_s' (line 5)"},
      {kMinimal + "migration:\n  reconnect: {initial_backoff_ms: 500, max_backoff_ms: 10}\n",
       "max_backoff_ms"},
      {kMinimal + "listen:\n  agent: nowhere\n", "key 'listen.agent' (line 4): must be host:port"},
      {kMinimal + "listen:\n  control: unix:rel\n", "key 'listen.control'"},
      {kMinimal + "listen:\n  metrics: \"h:99999\"\n", "port must be 0..65535"},
      {kMinimal + "log_level: loud\n", "key 'log_level' (line 3)"},
      {kMinimal + "log_format: xml\n", "key 'log_format' (line 3)"},
      {kMinimal + "state_dir: relative\n", "key 'state_dir'"},
      {kMinimal + "handshake:\n  allowed_uids: [0, x]\n", "key 'handshake.allowed_uids[1]'"},
      {kMinimal + "handshake:\n  socket_mode: \"999\"\n", "key 'handshake.socket_mode'"},
      {kMinimal + "migration: 5\n", "key 'migration'"},
      {kMinimal + "migration:\n  fault_thread_nice: -21\n",
       "key 'migration.fault_thread_nice' (line 4): must be an integer from -20 to 19"},
      {kMinimal + "migration:\n  source_urgent_thread_nice: 20\n",
       "key 'migration.source_urgent_thread_nice' (line 4): must be an integer from -20 to 19"},
  };
  for (const auto& c : cases) {
    auto msg = errorOf(c.yaml);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "yaml:\n" << c.yaml << "\nerror: " << msg;
    if (!c.yaml.empty()) {
      EXPECT_EQ(msg.rfind("t.yaml", 0), 0u) << msg;
    }
  }
}

// Issue 18, failure 7: yaml-cpp keeps both pairs of a repeated key and lookups return the
// first, so a second value was silently ignored.
TEST(Config, DuplicateKeysAreRefusedNamingTheKeyAndBothLines) {
  struct Case {
    std::string yaml, expect;
  };
  std::vector<Case> cases = {
      {kMinimal + "node_name: b\n",
       "key 'node_name' (line 3): duplicate key, set at lines 1 and 3 (the first would win)"},
      {kMinimal + "migration:\n  stall_timeout_ms: 1000\n  bulk_batch_pages: 8\n"
                  "  stall_timeout_ms: 2000\n",
       "key 'migration.stall_timeout_ms' (line 6): duplicate key, set at lines 4 and 6"},
      {kMinimal + "migration:\n  stall_timeout_ms: 1000\nlog_level: info\nmigration:\n"
                  "  bulk_batch_pages: 8\n",
       "key 'migration' (line 6): duplicate key, set at lines 3 and 6"},
      {kMinimal + "migration:\n  reconnect: {give_up_after_s: 5, give_up_after_s: 9}\n",
       "key 'migration.reconnect.give_up_after_s' (line 4): duplicate key, set twice at line 4"},
      {"node_name: a\ntls: {ca_file: /c, cert_file: /d, key_file: /e, ca_file: /f}\n",
       "key 'tls.ca_file' (line 2): duplicate key"},
  };
  for (const auto& c : cases) {
    auto msg = errorOf(c.yaml);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "yaml:\n" << c.yaml << "\nerror: " << msg;
  }
}

TEST(Config, LoadConfigChecksNamedFilesExist) {
  std::string path = "/tmp/lazymig-config-test.yaml";
  std::ofstream(path) << "node_name: a\ntls: {ca_file: /etc/hostname, cert_file: /nonexistent.crt, "
                         "key_file: /etc/hostname}\n";
  auto c = loadConfig(path);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("key 'tls.cert_file': cannot read '/nonexistent.crt'"),
            std::string::npos)
      << c.error().message();
  EXPECT_FALSE(loadConfig("/nonexistent/lazymig.yaml"));
  std::remove(path.c_str());
}

}  // namespace
}  // namespace lazymig::config

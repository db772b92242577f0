// An agent restarted over records it cannot use (cut short, a field of the wrong type, written
// by an older agent) starts, serves every other migration, and shows the bad one as failed
// with what was wrong; it never aborts. Real RocksDB, a real Agent with its control API.
#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "agent/core/migration_record.h"
#include "agent/daemon/agent.h"
#include "client/control_client.h"
#include "store/database.h"
#include "transport/pki.h"

namespace lazymig::agent {
namespace {

using nlohmann::json;

const std::string kToken(32, 'a');

json regionsJson() {
  return json::array({{{"base_host_virt_addr", 0x7f0000000000},
                       {"size", 1 << 20},
                       {"offset", 0},
                       {"page_size", 4096}}});
}

class RecordLoading : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazymig-record-loading-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    auto ca = transport::generateCa(dir_, "ca");
    ASSERT_TRUE(ca) << ca.error().message();
    transport::LeafSpec leaf;
    leaf.uris = {"spiffe://t/agent"};
    leaf.dns_names = {"localhost"};
    auto cert = transport::issueLeaf(*ca, dir_, "agent", leaf);
    ASSERT_TRUE(cert) << cert.error().message();
    config_.node_name = "record-loading";
    config_.agent_listen = "127.0.0.1:0";
    config_.control_listen = "unix:" + dir_ + "/control.sock";
    config_.metrics_listen = "off";
    config_.state_dir = dir_ + "/state";
    config_.handshake_dir = dir_ + "/vmm";
    config_.tls = {ca->cert_file, cert->cert_file, cert->key_file};
    ASSERT_EQ(::mkdir(config_.state_dir.c_str(), 0750), 0);
  }
  void TearDown() override {
    agent_.reset();
    std::filesystem::remove_all(dir_);
  }

  store::MigrationRecord record(const std::string& id, const std::string& role,
                                const std::string& state, const json& runtime) {
    json spec{{"id", id}, {"role", role}, {"token", kToken}, {"peer_identity", "spiffe://t/p"}};
    if (role == "destination") {
      spec["source_address"] = "127.0.0.1:1";
      spec["handshake_socket"] = config_.handshake_dir + "/" + id + ".sock";
    } else {
      spec["memory"] = {{"handover_socket", config_.handshake_dir + "/" + id + ".src.sock"}};
    }
    store::MigrationRecord r;
    r.id = id;
    r.role = role;
    r.state = state;
    r.spec_json = json{{"spec", spec}, {"runtime", runtime}}.dump();
    r.created_unix_ms = r.updated_unix_ms = 1'700'000'000'000;
    return r;
  }
  void put(const store::MigrationRecord& r) {
    auto db = store::Database::open(config_.state_dir + "/db");
    ASSERT_TRUE(db) << db.error().message();
    auto ok = (*db)->putMigration(r);
    ASSERT_TRUE(ok) << ok.error().message();
  }
  // A value the agent's own writer would never produce, straight into RocksDB.
  void putRaw(const std::string& key, const std::string& value) {
    rocksdb::DBOptions options;
    std::vector<rocksdb::ColumnFamilyDescriptor> families = {
        {rocksdb::kDefaultColumnFamilyName, {}}, {"migrations", {}}, {"pages", {}}};
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(
        rocksdb::DB::Open(options, config_.state_dir + "/db", families, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    ASSERT_TRUE(db->Put({}, handles[1], key, value).ok());
    for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
  }
  json migration(const std::string& id) {
    client::ControlClient c(agent_->controlAddress());
    auto r = c.get("/v1/migrations/" + id);
    EXPECT_TRUE(r) << r.error().message();
    if (!r) return {};
    EXPECT_EQ(r->status, 200) << id << ": " << r->body;
    return json::parse(r->body, nullptr, false);
  }

  std::string dir_;
  config::Config config_;
  std::unique_ptr<Agent> agent_;
};

TEST_F(RecordLoading, BadRecordsAreReportedAndEveryOtherMigrationIsServed) {
  put(record("intact", "destination", "waiting_for_vmm", nullptr));
  // Written before the memory fd's identity was kept: the source waits for a new handover.
  put(record("older", "source", "serving", {{"vmm_pid", ::getpid()}, {"regions", regionsJson()}}));
  put(record("wrong-type", "destination", "running",
             {{"vmm_pid", "4242"}, {"regions", regionsJson()}}));
  auto garbled = record("garbled-report", "source", "completed", nullptr);
  garbled.report_json = json{{"progress", json::object()}, {"updated_at", 17}}.dump();
  garbled.counters = {{"pages_total", 8}, {"pages_done", 8}};
  put(garbled);
  const std::string partial = R"({"id": "partial", "role": "destination"})";
  putRaw("partial", partial);

  auto agent = Agent::start(config_);
  ASSERT_TRUE(agent) << agent.error().message();
  agent_ = std::move(*agent);

  EXPECT_EQ(migration("intact").value("state", ""), "waiting_for_vmm");
  EXPECT_TRUE(std::filesystem::exists(config_.handshake_dir + "/intact.sock"));
  EXPECT_EQ(migration("older").value("state", ""), "waiting_for_memory");
  EXPECT_TRUE(std::filesystem::exists(config_.handshake_dir + "/older.src.sock"));
  auto finished = migration("garbled-report");
  EXPECT_EQ(finished.value("state", ""), "completed") << finished.dump();
  EXPECT_EQ(finished["progress"].value("pages_installed", 0), 8) << finished.dump();

  auto wrong = migration("wrong-type");
  EXPECT_EQ(wrong.value("state", ""), "failed");
  EXPECT_NE(wrong.value("reason", "").find("migration 'wrong-type': runtime.vmm_pid"),
            std::string::npos)
      << wrong.dump();
  auto cut = migration("partial");
  EXPECT_EQ(cut.value("state", ""), "failed");
  EXPECT_EQ(cut.value("role", ""), "destination");
  EXPECT_NE(cut.value("reason", "").find("migration 'partial': state: missing"), std::string::npos)
      << cut.dump();

  // The unreadable record is kept as it was, for whoever investigates.
  agent_->stop();
  agent_.reset();
  auto db = store::Database::open(config_.state_dir + "/db");
  ASSERT_TRUE(db);
  auto stored = (*db)->listMigrations();
  ASSERT_TRUE(stored) << stored.error().message();
  ASSERT_EQ(stored->unreadable.size(), 1u);
  EXPECT_EQ(stored->unreadable[0].key, "partial");
  EXPECT_EQ(stored->records.size(), 4u);
}

}  // namespace
}  // namespace lazymig::agent

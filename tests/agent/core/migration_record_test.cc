// The persisted runtime record: every field survives toJson/fromJson, records of older agents
// still read, and a bad record is an error naming the migration and the field, never a throw.
#include <gtest/gtest.h>

#include "agent/core/migration_record.h"

namespace lazymig::agent {
namespace {

using nlohmann::json;

std::vector<vmm::GuestRegionMapping> twoRegions() {
  vmm::GuestRegionMapping a;
  a.base_host_virt_addr = 0x7f0000000000;
  a.size = 2 << 20;
  a.offset = 0;
  a.page_size = 2 << 20;
  vmm::GuestRegionMapping b = a;
  b.base_host_virt_addr = 0x7f1000000000;
  b.offset = a.size;
  b.gpa_start = 1ull << 32;
  b.is_guest_memfd = true;
  return {a, b};
}

json minimalRuntime() {
  return {{"vmm_pid", 77}, {"regions", json::parse(vmm::encodeMappings(twoRegions()))}};
}

std::string errorOf(const json& runtime) {
  auto r = RuntimeRecord::fromJson(runtime, "vm-7");
  EXPECT_FALSE(r) << runtime.dump();
  return r ? std::string() : r.error().message();
}

TEST(RuntimeRecord, EveryFieldSurvivesTheRoundTrip) {
  RuntimeRecord full;
  full.vmm_pid = 4321;
  full.regions = twoRegions();
  full.handshake = vmm::HandshakeKind::kSharedMinor;
  full.memory = FileIdentity{0xfd01, 123456789};
  full.every_page_installed = true;
  full.live_source = true;
  full.precopy_switched = true;
  auto back = RuntimeRecord::fromJson(json::parse(full.toJson().dump()), "vm-7");
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(back->vmm_pid, full.vmm_pid);
  EXPECT_EQ(vmm::encodeMappings(back->regions), vmm::encodeMappings(full.regions));
  EXPECT_EQ(back->regions[1].gpa_start, full.regions[1].gpa_start);
  EXPECT_EQ(back->handshake, full.handshake);
  EXPECT_EQ(back->memory, full.memory);
  EXPECT_TRUE(back->every_page_installed);
  EXPECT_TRUE(back->live_source);
  EXPECT_TRUE(back->precopy_switched);
  EXPECT_EQ(back->toJson(), full.toJson());

  for (auto kind : {vmm::HandshakeKind::kClassic, vmm::HandshakeKind::kGuestMemfd}) {
    full.handshake = kind;
    auto kind_back = RuntimeRecord::fromJson(full.toJson(), "vm-7");
    ASSERT_TRUE(kind_back) << kind_back.error().message();
    EXPECT_EQ(kind_back->handshake, kind);
  }
}

TEST(RuntimeRecord, NothingKnownYetIsNullBothWays) {
  EXPECT_TRUE(RuntimeRecord{}.toJson().is_null());
  auto none = RuntimeRecord::fromJson(nullptr, "vm-7");
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->vmm_pid);
  EXPECT_TRUE(none->regions.empty());
  EXPECT_FALSE(RuntimeRecord::fromJson(json::object(), "vm-7")->vmm_pid);
}

TEST(RuntimeRecord, RecordsOfOlderAgentsRead) {
  // Before the handshake kind and the memory fd's identity were kept.
  auto old = RuntimeRecord::fromJson(minimalRuntime(), "vm-7");
  ASSERT_TRUE(old) << old.error().message();
  EXPECT_EQ(old->vmm_pid, 77);
  EXPECT_EQ(old->handshake, vmm::HandshakeKind::kClassic);
  EXPECT_FALSE(old->memory);
  EXPECT_FALSE(old->every_page_installed);
  EXPECT_EQ(old->regions.size(), 2u);
}

TEST(RuntimeRecord, BadFieldsAreErrorsThatNameTheMigrationAndTheField) {
  auto with = [](const char* field, json value) {
    json j = minimalRuntime();
    j[field] = std::move(value);
    return j;
  };
  auto without = [](const char* field) {
    json j = minimalRuntime();
    j.erase(field);
    return j;
  };
  const std::string prefix = "migration 'vm-7': runtime.";
  EXPECT_NE(errorOf(json::array()).find("migration 'vm-7': runtime: expected an object"),
            std::string::npos);
  EXPECT_NE(errorOf(with("vmm_pid", "77")).find(prefix + "vmm_pid: expected an unsigned"),
            std::string::npos);
  EXPECT_NE(errorOf(with("vmm_pid", -3)).find(prefix + "vmm_pid"), std::string::npos);
  EXPECT_NE(errorOf(with("vmm_pid", 0)).find(prefix + "vmm_pid: not a process id"),
            std::string::npos);
  EXPECT_NE(errorOf(with("vmm_pid", 1ull << 40)).find(prefix + "vmm_pid: not a process id"),
            std::string::npos);
  EXPECT_NE(errorOf(without("regions")).find(prefix + "regions: missing"), std::string::npos);
  EXPECT_NE(errorOf(without("vmm_pid")).find(prefix + "vmm_pid: missing"), std::string::npos);
  EXPECT_NE(errorOf(with("regions", "[]")).find(prefix + "regions: "), std::string::npos);
  EXPECT_NE(
      errorOf(with("regions", json::array({{{"size", 4096}}}))).find(prefix + "regions: region 0"),
      std::string::npos);
  EXPECT_NE(errorOf(with("handshake", "uffd")).find(prefix + "handshake: expected"),
            std::string::npos);
  EXPECT_NE(errorOf(with("handshake", 1)).find(prefix + "handshake"), std::string::npos);
  EXPECT_NE(errorOf(with("memory_dev", 3)).find(prefix + "memory_ino: missing"), std::string::npos);
  EXPECT_NE(errorOf(with("memory_ino", "3")).find(prefix + "memory_ino: expected"),
            std::string::npos);
  EXPECT_NE(errorOf(with("every_page_installed", "yes")).find(prefix + "every_page_installed"),
            std::string::npos);
  EXPECT_NE(errorOf(with("live_source", 1)).find(prefix + "live_source"), std::string::npos);
}

TEST(SavedMigration, RoundTripAndTheFirstFormat) {
  SavedMigration saved{{{"id", "vm-7"}, {"role", "source"}}, {}};
  saved.runtime.vmm_pid = 9;
  saved.runtime.regions = twoRegions();
  saved.runtime.memory = FileIdentity{1, 2};
  auto back = SavedMigration::fromJson(saved.toJson(), "vm-7");
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(back->spec, saved.spec);
  EXPECT_EQ(back->runtime.toJson(), saved.runtime.toJson());

  // The first agents stored the spec alone.
  auto first = SavedMigration::fromJson(R"({"id": "vm-7", "role": "source"})", "vm-7");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->spec.value("role", ""), "source");
  EXPECT_FALSE(first->runtime.vmm_pid);

  auto bad = SavedMigration::fromJson("{\"spec\": {}, \"runtime\": {\"vmm_pid\": true}}", "vm-7");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("migration 'vm-7': runtime.vmm_pid"), std::string::npos);
  EXPECT_FALSE(SavedMigration::fromJson("not json", "vm-7"));
  EXPECT_FALSE(SavedMigration::fromJson("[1]", "vm-7"));
}

}  // namespace
}  // namespace lazymig::agent

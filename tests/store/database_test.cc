#include "store/database.h"
#include "sys/unique_fd.h"
#include "tests/tmpfs.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace lazymig::store {
namespace {

class Db : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazymig-db-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

MigrationRecord record(const std::string& id) {
  MigrationRecord r;
  r.id = id;
  r.role = "destination";
  r.state = "running";
  r.spec_json = R"({"spec":{}})";
  r.counters = {{"pages_done", 5}};
  r.created_unix_ms = 1;
  return r;
}

TEST_F(Db, RecordsSurviveReopen) {
  {
    auto db = Database::open(dir_);
    ASSERT_TRUE(db) << db.error().message();
    ASSERT_TRUE((*db)->putMigration(record("vm-1")));
    auto r = record("vm-2");
    r.state = "completed";
    ASSERT_TRUE((*db)->putMigration(r));
  }
  auto db = Database::open(dir_);
  ASSERT_TRUE(db);
  auto got = (*db)->getMigration("vm-2");
  ASSERT_TRUE(got && *got);
  EXPECT_EQ((*got)->state, "completed");
  EXPECT_EQ((*got)->counters.at("pages_done"), 5u);
  EXPECT_EQ((*db)->listMigrations()->records.size(), 2u);
  EXPECT_FALSE(*(*db)->getMigration("vm-3"));
  EXPECT_FALSE((*db)->putMigration(record("")));
}

TEST_F(Db, PageChunksRoundTripAndDeleteRespectsIdPrefixes) {
  auto db = std::move(*Database::open(dir_));
  BitmapChunk c0{0, std::vector<std::uint64_t>(kPagesPerChunk / 64, 0)};
  c0.words[0] = 0b1011;
  BitmapChunk c2{2, std::vector<std::uint64_t>(kPagesPerChunk / 64, ~std::uint64_t{0})};
  ASSERT_TRUE(db->writePageChunks("vm-1", std::vector{c0, c2}));
  ASSERT_TRUE(db->writePageChunks("vm-10", std::vector{c2}));
  std::uint64_t pages = kPagesPerChunk * 2 + 70;  // the last chunk is partial
  auto bm = db->loadPageBitmap("vm-1", pages);
  ASSERT_TRUE(bm) << bm.error().message();
  EXPECT_EQ(bm->size(), pages);
  EXPECT_EQ(bm->words()[0], 0b1011u);
  EXPECT_EQ(bm->words()[2 * kPagesPerChunk / 64], ~std::uint64_t{0});
  EXPECT_EQ(bm->words().back(), (std::uint64_t{1} << 6) - 1);  // bits past page_count cleared
  EXPECT_EQ(bm->count(), 3 + 70u);
  ASSERT_TRUE(db->deleteMigration("vm-1"));
  EXPECT_EQ(db->loadPageBitmap("vm-1", pages)->count(), 0u);
  EXPECT_EQ(db->loadPageBitmap("vm-10", pages)->words()[2 * kPagesPerChunk / 64],
            ~std::uint64_t{0});
}

TEST_F(Db, SecondOpenOfALockedDatabaseIsAClearError) {
  auto a = Database::open(dir_);
  ASSERT_TRUE(a);
  auto b = Database::open(dir_);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message().find("rocksdb open"), std::string::npos);
}

// The writer half of WritesSurviveAKilledWriter. It runs in a process of its own,
// started by exec rather than a bare fork: RocksDB's background threads make fork
// without exec unsafe (and TSan refuses it).
TEST_F(Db, KilledWriterChild) {
  const char* dir = std::getenv("LAZYMIG_DB_CHILD_DIR");
  const char* fd = std::getenv("LAZYMIG_DB_CHILD_FD");
  if (dir == nullptr || fd == nullptr)
    GTEST_SKIP() << "runs only as the child of WritesSurviveAKilledWriter";
  auto db = std::move(*Database::open(dir));
  BitmapChunk c{1, std::vector<std::uint64_t>(kPagesPerChunk / 64, 0x5555)};
  bool ok = db->writePageChunks("vm-k", std::vector{c}) && db->putMigration(record("vm-k"));
  char b = ok ? 'y' : 'n';
  (void)!::write(std::atoi(fd), &b, 1);
  for (;;) ::pause();
}

// Invariant 4's durability: what a killed process wrote (and was told was written) is there.
TEST_F(Db, WritesSurviveAKilledWriter) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  sys::UniqueFd read_end(fds[0]), write_end(fds[1]);
  std::string fd_env = "LAZYMIG_DB_CHILD_FD=" + std::to_string(write_end.get());
  std::string dir_env = "LAZYMIG_DB_CHILD_DIR=" + dir_;
  pid_t child = ::fork();
  if (child == 0) {
    char filter[] = "--gtest_filter=Db.KilledWriterChild";
    char* argv[] = {const_cast<char*>("/proc/self/exe"), filter, nullptr};
    char* envp[] = {fd_env.data(), dir_env.data(), nullptr};
    ::execve("/proc/self/exe", argv, envp);
    ::_exit(127);
  }
  ASSERT_GT(child, 0);
  write_end.reset();  // so a child that dies early reads as EOF, not a hang
  char b = 0;
  ASSERT_EQ(::read(read_end.get(), &b, 1), 1);
  ASSERT_EQ(b, 'y');
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  auto db = Database::open(dir_);
  ASSERT_TRUE(db) << db.error().message();
  auto bm = (*db)->loadPageBitmap("vm-k", kPagesPerChunk * 2);
  ASSERT_TRUE(bm);
  EXPECT_EQ(bm->words()[kPagesPerChunk / 64], 0x5555u);
  EXPECT_TRUE(*(*db)->getMigration("vm-k"));
}

}  // namespace
}  // namespace lazymig::store

namespace lazymig::store {
namespace {

// Issue 18, failure 6: on a full state directory Debian's RocksDB aborted the agent
// (`Assertion 'sync_without_flush_called_' failed`, on the second write to its info LOG after
// the first failed). Now the first failed write stops writes until recover() reopens it.
TEST_F(Db, AFullDiskRefusesWritesWithoutAbortingAndRecoversWhenSpaceReturns) {
  std::string why;
  auto fs = testing::TmpfsMount::mount(dir_ + "/fs", 24ull << 20, why);
  if (!fs) GTEST_SKIP() << why;
  auto db = Database::open(fs->dir() + "/db");
  ASSERT_TRUE(db) << db.error().message();
  ASSERT_TRUE((*db)->putMigration(record("before")));
  EXPECT_TRUE((*db)->checkRoom());

  fs->fill();
  int written = 0;
  for (; written < 1000; ++written) {
    if (!(*db)->putMigration(record("full-" + std::to_string(written)))) break;
  }
  ASSERT_LT(written, 1000) << "the full disk never failed a write";
  auto failure = (*db)->failure();
  ASSERT_TRUE(failure);
  EXPECT_NE(failure->find("No space left"), std::string::npos) << *failure;
  EXPECT_NE(failure->find(fs->dir()), std::string::npos) << *failure;
  auto refused = (*db)->putMigration(record("refused"));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("not written"), std::string::npos);
  auto room = (*db)->checkRoom();
  ASSERT_FALSE(room);
  EXPECT_NE(room.error().message().find("bytes free"), std::string::npos) << room.error().message();
  auto early = (*db)->recover();
  ASSERT_FALSE(early) << "reopened on a full disk";
  EXPECT_NE(early.error().message().find("bytes free"), std::string::npos);
  auto still = (*db)->getMigration("before");
  ASSERT_TRUE(still && *still) << "reads keep working while writes are refused";

  fs->unfill();
  ASSERT_TRUE((*db)->recover());
  EXPECT_FALSE((*db)->failure());
  EXPECT_TRUE((*db)->checkRoom());
  ASSERT_TRUE((*db)->putMigration(record("after")));
  for (const char* id : {"before", "after"}) {
    auto r = (*db)->getMigration(id);
    ASSERT_TRUE(r && *r) << id;
  }
}

}  // namespace
}  // namespace lazymig::store

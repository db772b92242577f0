#include "store/page_map_checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "tests/store/gated_database.h"
#include "tests/tmpfs.h"

namespace lazymig::store {
namespace {

class Checkpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazymig-checkpoint-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

bool storedDone(Database& db, std::uint64_t page, std::uint64_t page_count) {
  auto bitmap = db.loadPageBitmap("m", page_count);
  EXPECT_TRUE(bitmap) << bitmap.error().message();
  return bitmap && bitmap->test(page);
}

// Issue 13: the bulk loop's timer and finish() on the urgent loop both checkpoint. The first
// takes the chunk (page 0 done) and is held inside its write; page 1 is installed and the
// second checkpoint runs to the end; then the first lands its older copy of the chunk. The
// stored chunk must still say page 1 is done.
TEST_F(Checkpoint, OverlappingCheckpointsNeverLeaveAStaleChunk) {
  auto real = Database::open(dir_);
  ASSERT_TRUE(real) << real.error().message();
  GatedDatabase db(**real);
  PageMap pages(64);
  PageMapCheckpoint checkpoint(db, "m", pages);

  pages.markInstalled(PageIndex{0});
  db.holdNextPageWrite();
  std::thread timer([&] { checkpoint.run(); });
  ASSERT_TRUE(db.waitUntilHeld());
  pages.markInstalled(PageIndex{1});
  checkpoint.run();  // finish(), on another thread than the held one
  db.release();
  timer.join();

  EXPECT_TRUE(storedDone(db, 0, 64));
  EXPECT_TRUE(storedDone(db, 1, 64)) << "a stale chunk landed last";
}

// Issue 18, failure 6: a checkpoint that could not be written is written by the next one,
// even though no page of its chunk changed in between.
TEST_F(Checkpoint, AFailedWriteIsWrittenAgainOnceTheDiskHasRoom) {
  std::string why;
  auto fs = testing::TmpfsMount::mount(dir_ + "/fs", 24ull << 20, why);
  if (!fs) GTEST_SKIP() << why;
  auto db = Database::open(fs->dir() + "/db");
  ASSERT_TRUE(db) << db.error().message();
  PageMap pages(64);
  PageMapCheckpoint checkpoint(**db, "m", pages);

  fs->fill();
  pages.markInstalled(PageIndex{5});
  // The first write to a full disk may still fit in what RocksDB had buffered: write until
  // one fails, as a migration's checkpoints do.
  std::uint64_t last = 5;
  for (; last < 63 && !checkpoint.failure(); pages.markInstalled(PageIndex{++last}))
    checkpoint.run();
  ASSERT_TRUE(checkpoint.failure()) << "the full disk never failed a write";
  EXPECT_NE(checkpoint.failure()->find("No space"), std::string::npos) << *checkpoint.failure();
  checkpoint.run();
  EXPECT_TRUE(checkpoint.failure()) << "refused while the database is failing";

  fs->unfill();
  ASSERT_TRUE((*db)->recover());
  checkpoint.run();
  EXPECT_FALSE(checkpoint.failure()) << *checkpoint.failure();
  for (std::uint64_t p = 5; p <= last; ++p) EXPECT_TRUE(storedDone(**db, p, 64)) << "page " << p;
}

}  // namespace
}  // namespace lazymig::store

// The agent's durable state in one RocksDB database (state_dir/db):
//   - migration records: what the control API returns, and what a restarted agent resumes;
//   - page map checkpoints: which pages of each migration are installed, as bitmap chunks.
// RocksDB is the checkpoint, never the hot path: the in-memory PageMap (page_map.h) is.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/bitmap.h"
#include "base/error.h"

namespace lazymig::store {

// One migration as persisted. `spec_json` is the create request (opaque here) so that a
// restarted agent can rebuild the migration; counters are free-form named totals.
struct MigrationRecord {
  std::string id;
  std::string role;   // "source" | "destination"
  std::string state;  // agent-defined state name
  std::string peer;
  std::string reason;  // why it failed or was cancelled; empty otherwise
  std::string spec_json;
  std::map<std::string, std::uint64_t> counters;
  // The migration as the control API showed it when it ended (JSON; empty while it runs), so
  // that a restarted agent shows a finished migration exactly as before.
  std::string report_json;
  std::int64_t created_unix_ms = 0;
  std::int64_t updated_unix_ms = 0;
};

// A stored record that cannot be read (cut short, a field of the wrong type): the key names
// the migration, the error the field. It stays in the database as it is.
struct UnreadableRecord {
  std::string key;
  Error error;
  std::string role;  // "source" or "destination" when the record still says so; else empty
};

struct StoredMigrations {
  std::vector<MigrationRecord> records;
  std::vector<UnreadableRecord> unreadable;
};

// A chunk of a page bitmap, the words of a Bitmap (base/bitmap.h) of kPagesPerChunk bits: bit
// i is page chunk_index * kPagesPerChunk + i. Stored as they are: the layout is on disk.
constexpr std::uint64_t kPagesPerChunk = 4096;
struct BitmapChunk {
  std::uint64_t chunk_index = 0;
  std::vector<std::uint64_t> words;  // Bitmap::wordsFor(kPagesPerChunk) words
};

// Free space below which the state directory counts as full: new migrations are refused
// (507) and a failed database is not reopened, so that RocksDB has room for its write-ahead
// log, a memtable flush and the next manifest.
constexpr std::uint64_t kMinFreeBytes = 16ull << 20;

class Database {
 public:
  // Opens or creates the database at `path` (a directory).
  //
  // A full or failing disk must not kill the agent. Debian's RocksDB is built with
  // assertions on, and its WritableFileWriter asserts (SIGABRT) when a file whose write
  // failed is written again: first of all RocksDB's own info LOG in the state directory,
  // which logs the very write error. So RocksDB's info log goes to the agent's log instead,
  // and after the first failed write this database stops handing writes to RocksDB
  // (failure()) until recover() has reopened it.
  static Result<std::unique_ptr<Database>> open(const std::string& path);
  virtual ~Database() = default;

  virtual Status putMigration(const MigrationRecord& record) = 0;
  virtual Result<std::optional<MigrationRecord>> getMigration(const std::string& id) = 0;
  // Every record; one that cannot be read is listed apart and hides none of the others.
  virtual Result<StoredMigrations> listMigrations() = 0;
  // Removes the record and its page map.
  virtual Status deleteMigration(const std::string& id) = 0;

  // Writes all chunks in one atomic batch (a chunk replaces the stored one).
  virtual Status writePageChunks(const std::string& migration_id,
                                 std::span<const BitmapChunk> chunks) = 0;
  // The stored bitmap for `page_count` pages; pages in chunks never written are clear (not
  // installed).
  virtual Result<Bitmap> loadPageBitmap(const std::string& migration_id,
                                        std::uint64_t page_count) = 0;
  // Why writes are refused since the first one failed; empty while writes go through.
  virtual std::optional<std::string> failure() const = 0;
  // When writes are refused: reopens the database once its directory has kMinFreeBytes
  // free again (reopening, not DB::Resume(): RocksDB 7.8 answers Busy after a write-ahead log
  // error and never resumes). Ok when writes go through afterwards.
  virtual Status recover() = 0;
  // Whether new work may start: an error naming the directory and its free space when writes
  // are refused or fewer than kMinFreeBytes are free.
  virtual Status checkRoom() const = 0;
  // Called after every write with how long it took (the RocksDB write-latency metric).
  virtual void setWriteObserver(std::function<void(std::chrono::nanoseconds)> observer) = 0;
};

}  // namespace lazymig::store

// The durable checkpoint of one migration's page map: its dirty chunks written to RocksDB.
// Called from the bulk loop's timer, from completion on the urgent loop, from shutdown and
// from the agent's persistence retry, so it must be safe from any thread.
#pragma once

#include <mutex>
#include <optional>
#include <string>

#include "base/latest_state_writer.h"
#include "base/log.h"
#include "store/database.h"
#include "store/page_map.h"

namespace lazymig::store {

class PageMapCheckpoint {
 public:
  PageMapCheckpoint(Database& db, std::string migration_id, PageMap& pages)
      : db_(db),
        migration_id_(std::move(migration_id)),
        pages_(pages),
        log_(log::root().with({{"component", "store"}, {"migration", migration_id_}})) {}

  // Writes the chunks changed since the last write. Two checkpoints never overlap: one taking
  // chunks while another still writes older copies of them could land the older copy last,
  // and the chunk, no longer dirty, would stay stale. A call that finds a checkpoint running
  // leaves the work to it and returns. A failed write puts its chunks back as dirty, so the
  // next call (the timer's, the retry's) writes them again.
  void run();
  // Why the last write failed; empty once a write succeeded again.
  std::optional<std::string> failure() const;

 private:
  void writeDirty();

  Database& db_;
  const std::string migration_id_;
  PageMap& pages_;
  log::Logger log_;
  LatestStateWriter writer_;
  mutable std::mutex mu_;  // guards failure_
  std::optional<std::string> failure_;
};

}  // namespace lazymig::store

#include "store/page_map_checkpoint.h"

namespace lazymig::store {

void PageMapCheckpoint::run() {
  writer_.write([this] { writeDirty(); });
}

void PageMapCheckpoint::writeDirty() {
  auto chunks = pages_.takeDirtyChunks();
  if (chunks.empty()) return;
  auto ok = db_.writePageChunks(migration_id_, chunks);
  if (!ok) pages_.markChunksDirty(chunks);
  std::lock_guard lock(mu_);
  // Logged when it starts and stops failing, not at every interval while it does.
  if (ok) {
    if (failure_) log_.info("page map checkpoints written again", {{"chunks", chunks.size()}});
    failure_.reset();
    return;
  }
  if (!failure_) {
    log_.warn("page map checkpoint failed; the page map stays in memory and is retried",
              {{"error", ok.error().message()}});
  }
  failure_ = "page map checkpoint: " + ok.error().message();
}

std::optional<std::string> PageMapCheckpoint::failure() const {
  std::lock_guard lock(mu_);
  return failure_;
}

}  // namespace lazymig::store

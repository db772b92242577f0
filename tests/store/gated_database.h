// The real database behind a gate that can hold one chosen write until the test lets it go:
// the seam that makes a race between two writers deterministic (hold the first writer inside
// its write, run the second, release the first).
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "store/database.h"

namespace lazymig::store {

class GatedDatabase final : public Database {
 public:
  explicit GatedDatabase(Database& real) : real_(real) {}

  // The next page-map write waits in the gate.
  void holdNextPageWrite() { arm(Held::kPages, ""); }
  // The next record write whose state is `state` waits in the gate.
  void holdNextRecordWrite(std::string state) { arm(Held::kRecord, std::move(state)); }
  // Until a write waits in the gate; false after 10 s.
  bool waitUntilHeld() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return holding_; });
  }
  void release() {
    std::lock_guard lock(mu_);
    armed_ = Held::kNothing;
    holding_ = false;
    cv_.notify_all();
  }

  Status putMigration(const MigrationRecord& record) override {
    gate(Held::kRecord, record.state);
    return real_.putMigration(record);
  }
  Result<std::optional<MigrationRecord>> getMigration(const std::string& id) override {
    return real_.getMigration(id);
  }
  Result<StoredMigrations> listMigrations() override { return real_.listMigrations(); }
  Status deleteMigration(const std::string& id) override { return real_.deleteMigration(id); }
  Status writePageChunks(const std::string& id, std::span<const BitmapChunk> chunks) override {
    gate(Held::kPages, "");
    return real_.writePageChunks(id, chunks);
  }
  Result<Bitmap> loadPageBitmap(const std::string& id, std::uint64_t page_count) override {
    return real_.loadPageBitmap(id, page_count);
  }
  std::optional<std::string> failure() const override { return real_.failure(); }
  Status recover() override { return real_.recover(); }
  Status checkRoom() const override { return real_.checkRoom(); }
  void setWriteObserver(std::function<void(std::chrono::nanoseconds)> observer) override {
    real_.setWriteObserver(std::move(observer));
  }

 private:
  enum class Held { kNothing, kPages, kRecord };
  void arm(Held what, std::string state) {
    std::lock_guard lock(mu_);
    armed_ = what;
    armed_state_ = std::move(state);
  }
  void gate(Held what, const std::string& state) {
    std::unique_lock lock(mu_);
    if (armed_ != what || (what == Held::kRecord && state != armed_state_)) return;
    armed_ = Held::kNothing;
    holding_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !holding_; });
  }

  Database& real_;
  std::mutex mu_;
  std::condition_variable cv_;
  Held armed_ = Held::kNothing;
  std::string armed_state_;
  bool holding_ = false;
};

}  // namespace lazymig::store

#include "store/database.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>

namespace lazymig::store {
namespace {

constexpr std::size_t kChunkBytes = kPagesPerChunk / 8;

std::string pageKey(const std::string& id, std::uint64_t chunk) {
  // id, a NUL (ids never contain one), then the chunk index big-endian so keys sort by chunk
  // and one id's keys never interleave with another's ("vm-1" vs "vm-10").
  std::string key = id;
  key.push_back('\0');
  for (int i = 7; i >= 0; --i) key.push_back(static_cast<char>((chunk >> (8 * i)) & 0xff));
  return key;
}

std::unexpected<Error> dbError(const std::string& op, const std::string& what,
                               const rocksdb::Status& s) {
  return std::unexpected(Error::make(Errc::kSystem, "rocksdb " + op, what + ": " + s.ToString()));
}

nlohmann::json toJson(const MigrationRecord& r) {
  return {{"id", r.id},
          {"role", r.role},
          {"state", r.state},
          {"peer", r.peer},
          {"reason", r.reason},
          {"spec", r.spec_json},
          {"counters", r.counters},
          {"report", r.report_json},
          {"created_unix_ms", r.created_unix_ms},
          {"updated_unix_ms", r.updated_unix_ms}};
}

Result<MigrationRecord> fromJson(const std::string& key, const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  auto corrupt = [&](const std::string& why) {
    return fail(Errc::kProtocol, "migration record", "key '" + key + "': " + why);
  };
  if (!j.is_object()) return corrupt("not a JSON object");
  MigrationRecord r;
  try {
    r.id = j.at("id").get<std::string>();
    r.role = j.at("role").get<std::string>();
    r.state = j.at("state").get<std::string>();
    r.peer = j.value("peer", "");
    r.reason = j.value("reason", "");
    r.spec_json = j.value("spec", "");
    r.counters = j.value("counters", std::map<std::string, std::uint64_t>{});
    r.report_json = j.value("report", "");
    r.created_unix_ms = j.value("created_unix_ms", std::int64_t{0});
    r.updated_unix_ms = j.value("updated_unix_ms", std::int64_t{0});
  } catch (const nlohmann::json::exception& e) {
    return corrupt(e.what());
  }
  return r;
}

class RocksDatabase final : public Database {
 public:
  RocksDatabase(rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> handles)
      : db_(db), handles_(std::move(handles)) {}
  ~RocksDatabase() override {
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    delete db_;
  }

  Status putMigration(const MigrationRecord& record) override {
    if (record.id.empty())
      return fail(Errc::kInvalidArgument, "putMigration", "empty migration id");
    rocksdb::WriteOptions wo;
    // Records change rarely and say what a restarted agent must resume: make them survive
    // a machine crash, not only a process crash.
    wo.sync = true;
    return timed("put", "migration '" + record.id + "'",
                 [&] { return db_->Put(wo, migrations(), record.id, toJson(record).dump()); });
  }

  Result<std::optional<MigrationRecord>> getMigration(const std::string& id) override {
    std::string value;
    auto s = db_->Get(rocksdb::ReadOptions(), migrations(), id, &value);
    if (s.IsNotFound()) return std::optional<MigrationRecord>();
    if (!s.ok()) return dbError("get", "migration '" + id + "'", s);
    auto r = fromJson(id, value);
    if (!r) return std::unexpected(r.error());
    return std::optional<MigrationRecord>(std::move(*r));
  }

  Result<std::vector<MigrationRecord>> listMigrations() override {
    std::vector<MigrationRecord> out;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), migrations()));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto r = fromJson(it->key().ToString(), it->value().ToString());
      if (!r) return std::unexpected(r.error());
      out.push_back(std::move(*r));
    }
    if (!it->status().ok()) return dbError("list", "migrations", it->status());
    return out;
  }

  Status deleteMigration(const std::string& id) override {
    rocksdb::WriteBatch batch;
    batch.Delete(migrations(), id);
    batch.DeleteRange(pages(), pageKey(id, 0), pageKey(id, ~std::uint64_t{0}));
    batch.Delete(pages(), pageKey(id, ~std::uint64_t{0}));
    rocksdb::WriteOptions wo;
    wo.sync = true;
    return timed("delete", "migration '" + id + "'", [&] { return db_->Write(wo, &batch); });
  }

  Status writePageChunks(const std::string& migration_id,
                         std::span<const BitmapChunk> chunks) override {
    rocksdb::WriteBatch batch;
    std::string value;
    for (const auto& c : chunks) {
      if (c.words.size() != kPagesPerChunk / 64) {
        return fail(Errc::kInvalidArgument, "writePageChunks",
                    "chunk " + std::to_string(c.chunk_index) + " has " +
                        std::to_string(c.words.size()) + " words");
      }
      value.assign(reinterpret_cast<const char*>(c.words.data()), kChunkBytes);
      batch.Put(pages(), pageKey(migration_id, c.chunk_index), value);
    }
    // No sync: the WAL survives a killed process, and after a machine crash the kernel's
    // view of present pages corrects whatever the last batches missed.
    return timed("write", "page map of '" + migration_id + "'",
                 [&] { return db_->Write(rocksdb::WriteOptions(), &batch); });
  }

  Result<std::vector<std::uint64_t>> loadPageBitmap(const std::string& migration_id,
                                                    std::uint64_t page_count) override {
    std::vector<std::uint64_t> out((page_count + 63) / 64, 0);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), pages()));
    std::string prefix = migration_id + std::string(1, '\0');
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      std::string key = it->key().ToString();
      if (key.size() != prefix.size() + 8 || it->value().size() != kChunkBytes) {
        return fail(Errc::kProtocol, "page map",
                    "corrupt chunk under migration '" + migration_id + "'");
      }
      std::uint64_t chunk = 0;
      for (int i = 0; i < 8; ++i) {
        chunk = (chunk << 8) | static_cast<unsigned char>(key[prefix.size() + i]);
      }
      std::uint64_t first_word = chunk * (kPagesPerChunk / 64);
      // RocksDB values carry no alignment: copy the words out rather than cast the bytes.
      const char* bytes = it->value().data();
      for (std::uint64_t w = 0; w < kPagesPerChunk / 64 && first_word + w < out.size(); ++w) {
        std::memcpy(&out[first_word + w], bytes + w * sizeof(std::uint64_t), sizeof(std::uint64_t));
      }
    }
    if (!it->status().ok())
      return dbError("load", "page map of '" + migration_id + "'", it->status());
    if (page_count % 64 != 0 && !out.empty())
      out.back() &= (std::uint64_t{1} << (page_count % 64)) - 1;
    return out;
  }

  void setWriteObserver(std::function<void(std::chrono::nanoseconds)> observer) override {
    std::lock_guard lock(mu_);
    observer_ = std::move(observer);
  }

 private:
  rocksdb::ColumnFamilyHandle* migrations() const { return handles_[1]; }
  rocksdb::ColumnFamilyHandle* pages() const { return handles_[2]; }

  template <class Fn>
  Status timed(const std::string& op, const std::string& what, Fn&& fn) {
    auto t0 = std::chrono::steady_clock::now();
    rocksdb::Status s = fn();
    auto d = std::chrono::steady_clock::now() - t0;
    {
      std::lock_guard lock(mu_);
      if (observer_) observer_(d);
    }
    if (!s.ok()) return dbError(op, what, s);
    return {};
  }

  rocksdb::DB* db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  std::mutex mu_;
  std::function<void(std::chrono::nanoseconds)> observer_;
};

}  // namespace

Result<std::unique_ptr<Database>> Database::open(const std::string& path) {
  rocksdb::DBOptions options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.max_background_jobs = 2;
  options.keep_log_file_num = 4;
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {"migrations", rocksdb::ColumnFamilyOptions()},
      {"pages", rocksdb::ColumnFamilyOptions()}};
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  auto s = rocksdb::DB::Open(options, path, families, &handles, &db);
  if (!s.ok()) return dbError("open", path, s);
  return std::unique_ptr<Database>(new RocksDatabase(db, std::move(handles)));
}

}  // namespace lazymig::store

#include "store/database.h"

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <atomic>
#include <cstdarg>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <shared_mutex>

#include "base/log.h"

namespace lazymig::store {
namespace {

constexpr std::uint64_t kChunkWords = Bitmap::wordsFor(kPagesPerChunk);
constexpr std::size_t kChunkBytes = kChunkWords * sizeof(std::uint64_t);

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

// Field by field, so that the error names the field: nlohmann's own exceptions name a type.
Result<MigrationRecord> fromJson(const std::string& key, const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  auto corrupt = [&](const std::string& why) {
    return fail(Errc::kProtocol, "migration record", "migration '" + key + "': " + why);
  };
  if (!j.is_object()) return corrupt("not a JSON object");
  auto text_field = [&](const char* field, std::string& out, bool required) -> Status {
    auto it = j.find(field);
    if (it == j.end() && !required) return {};
    if (it == j.end()) return corrupt(std::string(field) + ": missing");
    if (!it->is_string())
      return corrupt(std::string(field) + ": expected a string, got " + it->dump());
    out = it->get<std::string>();
    return {};
  };
  auto millis = [&](const char* field, std::int64_t& out) -> Status {
    auto it = j.find(field);
    if (it == j.end()) return {};
    if (!it->is_number_integer()) return corrupt(std::string(field) + ": expected an integer");
    out = it->get<std::int64_t>();
    return {};
  };
  MigrationRecord r;
  for (auto ok :
       {text_field("id", r.id, true), text_field("role", r.role, true),
        text_field("state", r.state, true), text_field("peer", r.peer, false),
        text_field("reason", r.reason, false), text_field("spec", r.spec_json, false),
        text_field("report", r.report_json, false), millis("created_unix_ms", r.created_unix_ms),
        millis("updated_unix_ms", r.updated_unix_ms)}) {
    if (!ok) return std::unexpected(ok.error());
  }
  if (auto it = j.find("counters"); it != j.end()) {
    if (!it->is_object()) return corrupt("counters: expected an object");
    for (const auto& [name, value] : it->items()) {
      if (!value.is_number_unsigned()) {
        return corrupt("counters." + name + ": expected an unsigned integer, got " + value.dump());
      }
      r.counters[name] = value.get<std::uint64_t>();
    }
  }
  return r;
}

// RocksDB's info log, into the agent's log instead of a LOG file in the state directory: that
// file is the first to hit a full disk, and the next line logged into it after a failed write
// aborts the process in an assertion-enabled RocksDB (see Database::open).
class AgentLogForRocksDb final : public rocksdb::Logger {
 public:
  AgentLogForRocksDb() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char line[1024];
    std::vsnprintf(line, sizeof line, format, ap);
    log_.warn("rocksdb", {{"message", line}});
  }

 private:
  log::Logger log_ = log::root().with({{"component", "rocksdb"}});
};

struct OpenDb {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
};

Result<OpenDb> openRocks(const std::string& path) {
  rocksdb::DBOptions options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.max_background_jobs = 2;
  options.keep_log_file_num = 4;
  options.info_log = std::make_shared<AgentLogForRocksDb>();
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {"migrations", rocksdb::ColumnFamilyOptions()},
      {"pages", rocksdb::ColumnFamilyOptions()}};
  // RocksDB would create it too, but first logs an error that it is missing.
  if (::mkdir(path.c_str(), 0750) != 0 && errno != EEXIST) return failSys("mkdir", path);
  OpenDb out;
  rocksdb::DB* db = nullptr;
  auto s = rocksdb::DB::Open(options, path, families, &out.handles, &db);
  if (!s.ok()) return dbError("open", path, s);
  out.db.reset(db);
  return out;
}

Result<std::uint64_t> freeBytes(const std::string& path) {
  struct statvfs st {};
  if (::statvfs(path.c_str(), &st) != 0) return failSys("statvfs", path);
  return static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
}

std::string freeText(const std::string& path) {
  auto free = freeBytes(path);
  return free ? std::to_string(*free) + " bytes free" : free.error().message();
}

class RocksDatabase final : public Database {
 public:
  RocksDatabase(std::string path, OpenDb open) : path_(std::move(path)), open_(std::move(open)) {}
  ~RocksDatabase() override { close(); }

  Status putMigration(const MigrationRecord& record) override {
    if (record.id.empty())
      return fail(Errc::kInvalidArgument, "putMigration", "empty migration id");
    rocksdb::WriteOptions wo;
    // Records change rarely and say what a restarted agent must resume: make them survive
    // a machine crash, not only a process crash.
    wo.sync = true;
    return write("put", "migration '" + record.id + "'", [&](rocksdb::DB& db) {
      return db.Put(wo, migrations(), record.id, toJson(record).dump());
    });
  }

  Result<std::optional<MigrationRecord>> getMigration(const std::string& id) override {
    std::string value;
    std::shared_lock life(life_);
    if (!open_.db) return closed("get");
    auto s = open_.db->Get(rocksdb::ReadOptions(), migrations(), id, &value);
    if (s.IsNotFound()) return std::optional<MigrationRecord>();
    if (!s.ok()) return dbError("get", "migration '" + id + "'", s);
    auto r = fromJson(id, value);
    if (!r) return std::unexpected(r.error());
    return std::optional<MigrationRecord>(std::move(*r));
  }

  Result<StoredMigrations> listMigrations() override {
    StoredMigrations out;
    std::shared_lock life(life_);
    if (!open_.db) return closed("list");
    std::unique_ptr<rocksdb::Iterator> it(
        open_.db->NewIterator(rocksdb::ReadOptions(), migrations()));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto r = fromJson(it->key().ToString(), it->value().ToString());
      if (r) {
        out.records.push_back(std::move(*r));
        continue;
      }
      auto j = nlohmann::json::parse(it->value().ToString(), nullptr, false);
      auto role = j.is_object() ? j.find("role") : j.end();
      bool known = role != j.end() && (*role == "source" || *role == "destination");
      out.unreadable.push_back(
          {it->key().ToString(), r.error(), known ? role->get<std::string>() : std::string()});
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
    return write("delete", "migration '" + id + "'",
                 [&](rocksdb::DB& db) { return db.Write(wo, &batch); });
  }

  Status writePageChunks(const std::string& migration_id,
                         std::span<const BitmapChunk> chunks) override {
    rocksdb::WriteBatch batch;
    std::string value;
    for (const auto& c : chunks) {
      if (c.words.size() != kChunkWords) {
        return fail(Errc::kInvalidArgument, "writePageChunks",
                    "chunk " + std::to_string(c.chunk_index) + " has " +
                        std::to_string(c.words.size()) + " words");
      }
      value.assign(reinterpret_cast<const char*>(c.words.data()), kChunkBytes);
      batch.Put(pages(), pageKey(migration_id, c.chunk_index), value);
    }
    // No sync: the WAL survives a killed process, and after a machine crash the kernel's
    // view of present pages corrects whatever the last batches missed.
    return write("write", "page map of '" + migration_id + "'",
                 [&](rocksdb::DB& db) { return db.Write(rocksdb::WriteOptions(), &batch); });
  }

  Result<Bitmap> loadPageBitmap(const std::string& migration_id,
                                std::uint64_t page_count) override {
    std::vector<std::uint64_t> out(Bitmap::wordsFor(page_count), 0);
    std::shared_lock life(life_);
    if (!open_.db) return closed("load");
    std::unique_ptr<rocksdb::Iterator> it(open_.db->NewIterator(rocksdb::ReadOptions(), pages()));
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
      std::uint64_t first_word = chunk * kChunkWords;
      // RocksDB values carry no alignment: copy the words out rather than cast the bytes.
      const char* bytes = it->value().data();
      for (std::uint64_t w = 0; w < kChunkWords && first_word + w < out.size(); ++w) {
        std::memcpy(&out[first_word + w], bytes + w * sizeof(std::uint64_t), sizeof(std::uint64_t));
      }
    }
    if (!it->status().ok())
      return dbError("load", "page map of '" + migration_id + "'", it->status());
    return Bitmap::fromWords(page_count, std::move(out));
  }

  std::optional<std::string> failure() const override {
    if (!failed_.load(std::memory_order_acquire)) return std::nullopt;
    std::lock_guard lock(failure_mu_);
    return failure_;
  }

  Status recover() override {
    if (!failed_.load(std::memory_order_acquire)) return {};
    auto free = freeBytes(path_);
    if (!free) return std::unexpected(free.error());
    if (*free < kMinFreeBytes) {
      return fail(Errc::kState, "rocksdb recover",
                  path_ + " has " + std::to_string(*free) + " bytes free; waiting for " +
                      std::to_string(kMinFreeBytes));
    }
    // No reader or writer is inside RocksDB while it is closed and opened again.
    std::unique_lock life(life_);
    close();
    auto reopened = openRocks(path_);
    if (!reopened) return std::unexpected(reopened.error());
    open_ = std::move(*reopened);
    failed_.store(false, std::memory_order_release);
    log_.info("state directory writable again; database reopened",
              {{"path", path_}, {"free_bytes", *free}});
    return {};
  }

  Status checkRoom() const override {
    if (auto why = failure()) return fail(Errc::kState, "state directory", *why);
    auto free = freeBytes(path_);
    if (!free) return std::unexpected(free.error());
    if (*free < kMinFreeBytes) {
      return fail(Errc::kState, "state directory",
                  path_ + " has " + std::to_string(*free) + " bytes free (less than " +
                      std::to_string(kMinFreeBytes) + ")");
    }
    return {};
  }

  void setWriteObserver(std::function<void(std::chrono::nanoseconds)> observer) override {
    std::lock_guard lock(observer_mu_);
    observer_ = std::move(observer);
  }

 private:
  rocksdb::ColumnFamilyHandle* migrations() const { return open_.handles[1]; }
  rocksdb::ColumnFamilyHandle* pages() const { return open_.handles[2]; }

  // Callers hold life_ exclusively (or are the destructor).
  void close() {
    if (!open_.db) return;
    for (auto* h : open_.handles) open_.db->DestroyColumnFamilyHandle(h);
    open_.handles.clear();
    open_.db.reset();
  }

  std::unexpected<Error> closed(const std::string& op) const {
    return fail(Errc::kState, "rocksdb " + op,
                path_ + " is closed after a failed reopen: " + failure().value_or(""));
  }

  // The only way a write reaches RocksDB: after one fails, none does until recover().
  template <class Fn>
  Status write(const std::string& op, const std::string& what, Fn&& fn) {
    std::shared_lock life(life_);
    if (failed_.load(std::memory_order_acquire) || !open_.db) {
      return fail(
          Errc::kState, "rocksdb " + op,
          what + ": not written, the state directory is failing: " + failure().value_or("closed"));
    }
    auto t0 = std::chrono::steady_clock::now();
    rocksdb::Status s = fn(*open_.db);
    auto d = std::chrono::steady_clock::now() - t0;
    {
      std::lock_guard lock(observer_mu_);
      if (observer_) observer_(d);
    }
    if (s.ok()) return {};
    std::string why = "writing to " + path_ + " failed: " + s.ToString() + " (" + freeText(path_) +
                      "); writes stop until it has room again";
    {
      std::lock_guard lock(failure_mu_);
      if (!failed_.load(std::memory_order_relaxed)) {
        failure_ = why;
        log_.error("state directory failing; migrations carry on from memory", {{"error", why}});
      }
      failed_.store(true, std::memory_order_release);
    }
    return dbError(op, what, s);
  }

  const std::string path_;
  // Shared by every read and write, exclusive while recover() closes and reopens open_.
  mutable std::shared_mutex life_;
  OpenDb open_;
  std::atomic<bool> failed_{false};
  mutable std::mutex failure_mu_;
  std::string failure_;
  std::mutex observer_mu_;
  std::function<void(std::chrono::nanoseconds)> observer_;
  log::Logger log_ = log::root().with({{"component", "store"}});
};

}  // namespace

Result<std::unique_ptr<Database>> Database::open(const std::string& path) {
  auto opened = openRocks(path);
  if (!opened) return std::unexpected(opened.error());
  return std::unique_ptr<Database>(new RocksDatabase(path, std::move(*opened)));
}

}  // namespace lazymig::store

#include "agent/core/migration_record.h"

#include <limits>

namespace lazymig::agent {
namespace {

using nlohmann::json;

// One reader of one record: every error names the migration and the field.
class FieldReader {
 public:
  FieldReader(const json& object, std::string_view migration_id)
      : object_(object), migration_id_(migration_id) {}

  std::unexpected<Error> bad(std::string_view field, const std::string& why) const {
    return fail(Errc::kInvalidArgument, "migration record",
                "migration '" + std::string(migration_id_) + "': runtime" +
                    (field.empty() ? "" : "." + std::string(field)) + ": " + why);
  }
  const json* find(const char* field) const {
    auto it = object_.find(field);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }
  Result<std::optional<std::uint64_t>> u64(const char* field) const {
    const json* v = find(field);
    if (!v) return std::nullopt;
    // Parsed text holds non-negative numbers as unsigned; a json built in memory may not.
    if (!v->is_number_integer() || (!v->is_number_unsigned() && v->get<std::int64_t>() < 0)) {
      return bad(field, "expected an unsigned integer, got " + v->dump());
    }
    return v->get<std::uint64_t>();
  }

 private:
  const json& object_;
  std::string_view migration_id_;
};

std::optional<vmm::HandshakeKind> handshakeKindNamed(std::string_view name) {
  for (auto kind : {vmm::HandshakeKind::kClassic, vmm::HandshakeKind::kSharedMinor,
                    vmm::HandshakeKind::kGuestMemfd}) {
    if (vmm::handshakeKindName(kind) == name) return kind;
  }
  return std::nullopt;
}

}  // namespace

json RuntimeRecord::toJson() const {
  if (!vmm_pid) return nullptr;
  json out{{"vmm_pid", *vmm_pid},
           {"handshake", std::string(vmm::handshakeKindName(handshake))},
           {"regions", json::parse(vmm::encodeMappings(regions), nullptr, false)}};
  if (memory) {
    out["memory_dev"] = memory->dev;
    out["memory_ino"] = memory->ino;
  }
  if (every_page_installed) out["every_page_installed"] = true;
  if (live_source) out["live_source"] = true;
  if (precopy_switched) out["precopy_switched"] = true;
  return out;
}

Result<RuntimeRecord> RuntimeRecord::fromJson(const json& j, std::string_view migration_id) {
  RuntimeRecord r;
  if (j.is_null()) return r;
  FieldReader read(j, migration_id);
  if (!j.is_object()) return read.bad("", "expected an object, got " + j.dump());

  auto pid = read.u64("vmm_pid");
  if (!pid) return std::unexpected(pid.error());
  if (!*pid) {
    if (read.find("regions") || read.find("every_page_installed")) {
      return read.bad("vmm_pid", "missing, while the record has the VMM's regions");
    }
    return r;  // no VMM had connected yet
  }
  if (**pid == 0 || **pid > static_cast<std::uint64_t>(std::numeric_limits<pid_t>::max())) {
    return read.bad("vmm_pid", "not a process id: " + std::to_string(**pid));
  }
  r.vmm_pid = static_cast<pid_t>(**pid);

  const json* regions = read.find("regions");
  if (!regions) {
    return read.bad("regions", "missing: the record names the VMM (pid " +
                                   std::to_string(*r.vmm_pid) + ") but not its memory");
  }
  auto mappings = vmm::parseMappings(regions->dump());
  if (!mappings) return read.bad("regions", mappings.error().context);
  r.regions = std::move(*mappings);

  if (const json* kind = read.find("handshake")) {
    auto named = kind->is_string() ? handshakeKindNamed(kind->get<std::string>()) : std::nullopt;
    if (!named) {
      return read.bad(
          "handshake",
          "expected \"classic\", \"shared_minor\" or \"guest_memfd\", got " + kind->dump());
    }
    r.handshake = *named;
  }

  auto dev = read.u64("memory_dev");
  if (!dev) return std::unexpected(dev.error());
  auto ino = read.u64("memory_ino");
  if (!ino) return std::unexpected(ino.error());
  if (dev->has_value() != ino->has_value()) {
    return read.bad(dev->has_value() ? "memory_ino" : "memory_dev",
                    "missing, while the record has the other half of the memory fd's identity");
  }
  if (*dev) r.memory = FileIdentity{**dev, **ino};

  for (auto [field, flag] : {std::pair{"every_page_installed", &r.every_page_installed},
                             std::pair{"live_source", &r.live_source},
                             std::pair{"precopy_switched", &r.precopy_switched}}) {
    if (const json* v = read.find(field)) {
      if (!v->is_boolean()) return read.bad(field, "expected true or false");
      *flag = v->get<bool>();
    }
  }
  return r;
}

std::string SavedMigration::toJson() const {
  return json{{"spec", spec}, {"runtime", runtime.toJson()}}.dump();
}

Result<SavedMigration> SavedMigration::fromJson(std::string_view text,
                                                std::string_view migration_id) {
  auto doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return fail(Errc::kInvalidArgument, "migration record",
                "migration '" + std::string(migration_id) + "': spec: not a JSON object");
  }
  SavedMigration saved;
  if (!doc.contains("spec")) {
    saved.spec = std::move(doc);  // the first format: the spec alone, no runtime
    return saved;
  }
  auto runtime = RuntimeRecord::fromJson(doc.value("runtime", json()), migration_id);
  if (!runtime) return std::unexpected(runtime.error());
  saved.spec = std::move(doc["spec"]);
  saved.runtime = std::move(*runtime);
  return saved;
}

}  // namespace lazymig::agent

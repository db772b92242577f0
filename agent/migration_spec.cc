#include "agent/migration_spec.h"

#include <cctype>

namespace lazymig::agent {
namespace {

using nlohmann::json;

Error bad(const std::string& field, const std::string& why) {
  return Error::make(Errc::kInvalidArgument, "migration request", "field '" + field + "': " + why);
}

Result<std::string> requiredString(const json& body, const std::string& field) {
  auto it = body.find(field);
  if (it == body.end()) return std::unexpected(bad(field, "is required"));
  if (!it->is_string()) return std::unexpected(bad(field, "must be a string"));
  auto s = it->get<std::string>();
  if (s.empty()) return std::unexpected(bad(field, "must not be empty"));
  return s;
}

Result<std::string> optionalString(const json& body, const std::string& field) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return std::string();
  if (!it->is_string()) return std::unexpected(bad(field, "must be a string"));
  return it->get<std::string>();
}

Status checkToken(const std::string& token) {
  if (token.size() < 32 || token.size() > 128) {
    return std::unexpected(bad("token", "must be 32 to 128 hex characters (at least 128 bits)"));
  }
  for (char c : token) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) {
      return std::unexpected(bad("token", "must be hexadecimal"));
    }
  }
  return {};
}

Status checkAbsolutePath(const std::string& field, const std::string& path) {
  if (path.empty() || path.front() != '/') {
    return std::unexpected(bad(field, "must be an absolute path"));
  }
  return {};
}

Result<SourceSpec> parseSource(const json& body, SourceSpec spec) {
  auto mem = body.find("memory");
  if (mem == body.end() || !mem->is_object()) {
    return std::unexpected(bad("memory",
                               "is required: {\"snapshot_file\": ...} or "
                               "{\"handover_socket\": ...}"));
  }
  auto file = optionalString(*mem, "snapshot_file");
  if (!file) return std::unexpected(bad("memory.snapshot_file", "must be a string"));
  auto sock = optionalString(*mem, "handover_socket");
  if (!sock) return std::unexpected(bad("memory.handover_socket", "must be a string"));
  if (file->empty() == sock->empty()) {
    return std::unexpected(bad("memory", "give exactly one of snapshot_file and handover_socket"));
  }
  if (!file->empty()) {
    if (auto ok = checkAbsolutePath("memory.snapshot_file", *file); !ok)
      return std::unexpected(ok.error());
  } else if (auto ok = checkAbsolutePath("memory.handover_socket", *sock); !ok) {
    return std::unexpected(ok.error());
  }
  spec.snapshot_file = *file;
  spec.handover_socket = *sock;
  if (auto ps = mem->find("page_size"); ps != mem->end() && !ps->is_null()) {
    if (!ps->is_number_unsigned()) {
      return std::unexpected(bad("memory.page_size", "must be a positive integer (bytes)"));
    }
    auto v = ps->get<std::uint64_t>();
    if (v < 4096 || v > (1ull << 30) || (v & (v - 1)) != 0) {
      return std::unexpected(
          bad("memory.page_size",
              "must be a power of two from 4096 to 1 GiB, got " + std::to_string(v)));
    }
    if (file->empty()) {
      return std::unexpected(
          bad("memory.page_size", "goes with snapshot_file only (a handover says its own)"));
    }
    spec.page_size = v;
  }
  return spec;
}

Result<DestinationSpec> parseDestination(const json& body, DestinationSpec spec,
                                         const std::string& handshake_dir) {
  auto addr = requiredString(body, "source_address");
  if (!addr) return std::unexpected(addr.error());
  if (addr->rfind(':') == std::string::npos) {
    return std::unexpected(bad("source_address", "must be host:port"));
  }
  spec.source_address = *addr;
  auto sock = optionalString(body, "handshake_socket");
  if (!sock) return std::unexpected(sock.error());
  spec.handshake_socket = sock->empty() ? handshake_dir + "/" + spec.id + ".sock" : *sock;
  if (auto ok = checkAbsolutePath("handshake_socket", spec.handshake_socket); !ok) {
    return std::unexpected(ok.error());
  }
  if (auto it = body.find("vmm_pid"); it != body.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<long long>() <= 0) {
      return std::unexpected(bad("vmm_pid", "must be a positive integer"));
    }
    spec.vmm_pid = static_cast<pid_t>(it->get<long long>());
  }
  return spec;
}

}  // namespace

bool isValidMigrationId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-')
      return false;
  }
  return id != "." && id != "..";
}

Result<MigrationSpec> parseMigrationSpec(const json& body, const std::string& handshake_dir) {
  if (!body.is_object()) return std::unexpected(bad("(body)", "must be a JSON object"));
  auto id = requiredString(body, "id");
  if (!id) return std::unexpected(id.error());
  if (!isValidMigrationId(*id)) {
    return std::unexpected(bad("id", "must be 1..128 characters of [A-Za-z0-9._-]"));
  }
  auto role = requiredString(body, "role");
  if (!role) return std::unexpected(role.error());
  auto token = requiredString(body, "token");
  if (!token) return std::unexpected(token.error());
  if (auto ok = checkToken(*token); !ok) return std::unexpected(ok.error());
  auto peer = requiredString(body, "peer_identity");
  if (!peer) return std::unexpected(peer.error());
  if (*role == "source") {
    auto s = parseSource(body, SourceSpec{*id, *token, *peer, {}, {}});
    if (!s) return std::unexpected(s.error());
    return MigrationSpec(std::move(*s));
  }
  if (*role == "destination") {
    auto d = parseDestination(body, DestinationSpec{*id, *token, *peer, {}, {}, {}}, handshake_dir);
    if (!d) return std::unexpected(d.error());
    return MigrationSpec(std::move(*d));
  }
  return std::unexpected(
      bad("role", "must be \"source\" or \"destination\", got \"" + *role + "\""));
}

nlohmann::json specToJson(const MigrationSpec& spec) {
  if (const auto* s = std::get_if<SourceSpec>(&spec)) {
    json mem = s->snapshot_file.empty() ? json{{"handover_socket", s->handover_socket}}
                                        : json{{"snapshot_file", s->snapshot_file}};
    if (s->page_size != 4096) mem["page_size"] = s->page_size;
    return {{"id", s->id},
            {"role", "source"},
            {"token", s->token},
            {"peer_identity", s->peer_identity},
            {"memory", mem}};
  }
  const auto& d = std::get<DestinationSpec>(spec);
  json out{{"id", d.id},
           {"role", "destination"},
           {"token", d.token},
           {"peer_identity", d.peer_identity},
           {"source_address", d.source_address},
           {"handshake_socket", d.handshake_socket}};
  if (d.vmm_pid) out["vmm_pid"] = *d.vmm_pid;
  return out;
}

}  // namespace lazymig::agent

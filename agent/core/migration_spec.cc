#include "agent/core/migration_spec.h"

#include <cctype>
#include <fstream>

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

// host:port with a port from 1 to 65535 ("[::1]:7000" for IPv6): anything else would be
// truncated to 16 bits or refused only when the first connection is tried.
Status checkHostPort(const std::string& field, const std::string& address) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return std::unexpected(bad(field, "must be host:port, got '" + address + "'"));
  }
  const std::string port = address.substr(colon + 1);
  if (port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos || std::stoul(port) < 1 ||
      std::stoul(port) > 65535) {
    return std::unexpected(bad(field, "port must be 1..65535, got '" + port + "'"));
  }
  return {};
}

// The kernel's pid range: 1 to /proc/sys/kernel/pid_max (at most 2^22). A larger JSON number
// must not wrap into pid_t: 2^32 + a process's pid would let that process pass the pid check.
Result<pid_t> pidField(const std::string& field, const json& value) {
  long long max = 4194304;  // PID_MAX_LIMIT on 64-bit kernels
  if (std::ifstream in("/proc/sys/kernel/pid_max"); in) in >> max;
  const std::string range = "must be a process id from 1 to " + std::to_string(max - 1);
  if (!value.is_number_integer()) return std::unexpected(bad(field, range));
  const bool in_range = value.is_number_unsigned()
                            ? value.get<std::uint64_t>() - 1 < static_cast<std::uint64_t>(max - 1)
                            : value.get<long long>() > 0 && value.get<long long>() < max;
  if (!in_range) {
    return std::unexpected(bad(field, range + ", got " + value.dump()));
  }
  return static_cast<pid_t>(value.get<long long>());
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
  if (auto ok = checkHostPort("source_address", *addr); !ok) return std::unexpected(ok.error());
  spec.source_address = *addr;
  auto sock = optionalString(body, "handshake_socket");
  if (!sock) return std::unexpected(sock.error());
  spec.handshake_socket = sock->empty() ? handshake_dir + "/" + spec.id + ".sock" : *sock;
  if (auto ok = checkAbsolutePath("handshake_socket", spec.handshake_socket); !ok) {
    return std::unexpected(ok.error());
  }
  if (auto it = body.find("vmm_pid"); it != body.end() && !it->is_null()) {
    auto pid = pidField("vmm_pid", *it);
    if (!pid) return std::unexpected(pid.error());
    spec.vmm_pid = *pid;
  }
  return spec;
}

// `precopy` ("off" when absent) and `precopy_deadline_ms` (60000 when absent), both roles.
Result<PrecopyPolicy> parsePrecopyFields(const json& body) {
  std::chrono::milliseconds deadline = PrecopyPolicy{}.deadline;
  if (auto it = body.find("precopy_deadline_ms"); it != body.end() && !it->is_null()) {
    // A json built in memory holds small numbers as signed; parsed text as unsigned.
    if (!it->is_number_integer() || it->get<std::int64_t>() < 1 ||
        it->get<std::int64_t>() > 86'400'000) {
      return std::unexpected(
          bad("precopy_deadline_ms", "must be a whole number of milliseconds from 1 to 86400000"));
    }
    deadline = std::chrono::milliseconds(it->get<std::int64_t>());
  }
  auto text = optionalString(body, "precopy");
  if (!text) return std::unexpected(text.error());
  auto policy = parsePrecopyPolicy(text->empty() ? "off" : *text, deadline);
  if (!policy) return std::unexpected(bad("precopy", policy.error().context));
  return policy;
}

void addPrecopyFields(json& out, const PrecopyPolicy& policy) {
  if (policy.mode == PrecopyPolicy::Mode::kOff) return;  // records stay as they were
  out["precopy"] = precopyPolicyText(policy);
  out["precopy_deadline_ms"] = policy.deadline.count();
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
  if (*role != "source" && *role != "destination") {
    return std::unexpected(
        bad("role", "must be \"source\" or \"destination\", got \"" + *role + "\""));
  }
  auto precopy = parsePrecopyFields(body);
  if (!precopy) return std::unexpected(precopy.error());
  if (*role == "source") {
    auto s = parseSource(body, SourceSpec{*id, *token, *peer, {}, {}});
    if (!s) return std::unexpected(s.error());
    s->precopy = *precopy;
    return MigrationSpec(std::move(*s));
  }
  auto d = parseDestination(body, DestinationSpec{*id, *token, *peer, {}, {}, {}}, handshake_dir);
  if (!d) return std::unexpected(d.error());
  d->precopy = *precopy;
  return MigrationSpec(std::move(*d));
}

nlohmann::json specToJson(const MigrationSpec& spec) {
  if (const auto* s = std::get_if<SourceSpec>(&spec)) {
    json mem = s->snapshot_file.empty() ? json{{"handover_socket", s->handover_socket}}
                                        : json{{"snapshot_file", s->snapshot_file}};
    if (s->page_size != 4096) mem["page_size"] = s->page_size;
    json out{{"id", s->id},
             {"role", "source"},
             {"token", s->token},
             {"peer_identity", s->peer_identity},
             {"memory", mem}};
    addPrecopyFields(out, s->precopy);
    return out;
  }
  const auto& d = std::get<DestinationSpec>(spec);
  json out{{"id", d.id},
           {"role", "destination"},
           {"token", d.token},
           {"peer_identity", d.peer_identity},
           {"source_address", d.source_address},
           {"handshake_socket", d.handshake_socket}};
  if (d.vmm_pid) out["vmm_pid"] = *d.vmm_pid;
  addPrecopyFields(out, d.precopy);
  return out;
}

}  // namespace lazymig::agent

#include "config/config.h"

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "base/log.h"

namespace lazymig::config {
namespace {

class Parser {
 public:
  explicit Parser(std::string source) : source_(std::move(source)) {}

  std::unexpected<Error> error(const std::string& path, const YAML::Node& node,
                               const std::string& why) const {
    std::string where = "key '" + path + "'";
    if (node.IsDefined() && node.Mark().line >= 0)
      where += " (line " + std::to_string(node.Mark().line + 1) + ")";
    return std::unexpected(Error::make(Errc::kConfig, source_, where + ": " + why));
  }

  // Rejects keys this mapping does not know, suggesting the closest known one.
  Status onlyKnown(const YAML::Node& map, const std::string& path,
                   const std::vector<std::string>& known) const {
    if (!map.IsMap()) return error(path.empty() ? "(root)" : path, map, "must be a mapping");
    for (auto it = map.begin(); it != map.end(); ++it) {
      std::string key = it->first.as<std::string>();
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      std::string full = path.empty() ? key : path + "." + key;
      std::string hint;
      std::size_t best = 3;
      for (const auto& k : known) {
        std::size_t d = distance(key, k);
        if (d < best) {
          best = d;
          hint = " (did you mean '" + (path.empty() ? k : path + "." + k) + "'?)";
        }
      }
      return error(full, it->first, "unknown key" + hint);
    }
    return {};
  }

  Status string(const YAML::Node& map, const std::string& path, const char* key, std::string& out,
                bool required = false) const {
    YAML::Node n = map[key];
    std::string full = path.empty() ? key : path + "." + key;
    if (!n.IsDefined() || n.IsNull()) {
      if (required) return error(full, map, "is required");
      return {};
    }
    if (!n.IsScalar()) return error(full, n, "must be a string");
    out = n.as<std::string>();
    if (required && out.empty()) return error(full, n, "must not be empty");
    return {};
  }

  template <class T>
  Status integer(const YAML::Node& map, const std::string& path, const char* key, T& out,
                 long long min, long long max) const {
    YAML::Node n = map[key];
    std::string full = path + "." + key;
    if (!n.IsDefined() || n.IsNull()) return {};
    long long v = 0;
    if (!n.IsScalar() || !YAML::convert<long long>::decode(n, v)) {
      return error(full, n,
                   "must be an integer from " + std::to_string(min) + " to " + std::to_string(max) +
                       ", got '" + (n.IsScalar() ? n.Scalar() : std::string("a non-scalar")) + "'");
    }
    if (v < min || v > max) {
      return error(full, n,
                   "must be an integer from " + std::to_string(min) + " to " + std::to_string(max) +
                       ", got " + std::to_string(v));
    }
    out = static_cast<T>(v);
    return {};
  }

  Status hostPort(const std::string& full, const YAML::Node& n, const std::string& v,
                  bool allow_unix) const {
    if (allow_unix && v.rfind("unix:", 0) == 0) {
      if (v.size() < 7 || v[5] != '/')
        return error(full, n, "unix: needs an absolute path, got '" + v + "'");
      return {};
    }
    auto colon = v.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == v.size()) {
      return error(full, n,
                   std::string("must be host:port") + (allow_unix ? " or unix:/path" : "") +
                       ", got '" + v + "'");
    }
    std::string port = v.substr(colon + 1);
    if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
        std::stoi(port) > 65535) {
      return error(full, n, "port must be 0..65535, got '" + port + "'");
    }
    return {};
  }

 private:
  static std::size_t distance(const std::string& a, const std::string& b) {
    std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
      cur[0] = i;
      for (std::size_t j = 1; j <= b.size(); ++j) {
        cur[j] =
            std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      }
      prev.swap(cur);
    }
    return prev[b.size()];
  }
  std::string source_;
};

// yaml-cpp keeps both pairs of a repeated key and lookups return the first, so a second
// `stall_timeout_ms` (or a second `migration:` block) would be silently ignored: the
// operator's later edit, the one they meant, loses. Refuse it wherever it occurs.
Status rejectDuplicateKeys(const Parser& p, const YAML::Node& node, const std::string& path) {
  if (node.IsSequence()) {
    for (std::size_t i = 0; i < node.size(); ++i) {
      if (auto ok = rejectDuplicateKeys(p, node[i], path + "[" + std::to_string(i) + "]"); !ok)
        return ok;
    }
    return {};
  }
  if (!node.IsMap()) return {};
  std::map<std::string, int> first_line;
  for (auto it = node.begin(); it != node.end(); ++it) {
    std::string key = it->first.IsScalar() ? it->first.Scalar() : std::string("(complex key)");
    std::string full = path.empty() ? key : path + "." + key;
    int line = it->first.Mark().line + 1;
    auto [seen, fresh] = first_line.emplace(key, line);
    if (!fresh) {
      std::string lines = seen->second == line ? "twice at line " + std::to_string(line)
                                               : "at lines " + std::to_string(seen->second) +
                                                     " and " + std::to_string(line);
      return p.error(full, it->first,
                     "duplicate key, set " + lines + " (the first would win); remove one");
    }
    if (auto ok = rejectDuplicateKeys(p, it->second, full); !ok) return ok;
  }
  return {};
}

#define TRY(expr)                         \
  do {                                    \
    if (auto s_ = (expr); !s_) {          \
      return std::unexpected(s_.error()); \
    }                                     \
  } while (0)

Status parseListen(const Parser& p, const YAML::Node& root, Config& c) {
  YAML::Node n = root["listen"];
  if (!n.IsDefined() || n.IsNull()) return {};
  TRY(p.onlyKnown(n, "listen", {"agent", "control", "metrics"}));
  TRY(p.string(n, "listen", "agent", c.agent_listen));
  TRY(p.hostPort("listen.agent", n["agent"], c.agent_listen, false));
  TRY(p.string(n, "listen", "control", c.control_listen));
  TRY(p.hostPort("listen.control", n["control"], c.control_listen, true));
  TRY(p.string(n, "listen", "metrics", c.metrics_listen));
  if (!c.metrics_listen.empty() && c.metrics_listen != "off") {
    TRY(p.hostPort("listen.metrics", n["metrics"], c.metrics_listen, false));
  }
  return {};
}

Status parseMigration(const Parser& p, const YAML::Node& root, Config& c) {
  YAML::Node n = root["migration"];
  if (!n.IsDefined() || n.IsNull()) return {};
  TRY(p.onlyKnown(n, "migration",
                  {"bulk_batch_pages", "bulk_window_kib", "checkpoint_interval_ms",
                   "stall_timeout_ms", "handshake_timeout_ms", "reconnect", "bulk_rate_limit_mib_s",
                   "fault_thread_nice", "source_urgent_thread_nice"}));
  auto& m = c.migration;
  TRY(p.integer(n, "migration", "bulk_batch_pages", m.bulk_batch_pages, 1, 1024));
  TRY(p.integer(n, "migration", "bulk_window_kib", m.bulk_window_bytes_kib, 64, 1 << 20));
  TRY(p.integer(n, "migration", "bulk_rate_limit_mib_s", m.bulk_rate_limit_mib_s, 0, 1 << 20));
  TRY(p.integer(n, "migration", "fault_thread_nice", m.fault_thread_nice, -20, 19));
  TRY(p.integer(n, "migration", "source_urgent_thread_nice", m.source_urgent_thread_nice, -20, 19));
  long long ms = m.checkpoint_interval.count();
  TRY(p.integer(n, "migration", "checkpoint_interval_ms", ms, 1, 60000));
  m.checkpoint_interval = std::chrono::milliseconds(ms);
  ms = m.stall_timeout.count();
  TRY(p.integer(n, "migration", "stall_timeout_ms", ms, 100, 600000));
  m.stall_timeout = std::chrono::milliseconds(ms);
  ms = m.handshake_timeout.count();
  TRY(p.integer(n, "migration", "handshake_timeout_ms", ms, 100, 600000));
  m.handshake_timeout = std::chrono::milliseconds(ms);
  YAML::Node r = n["reconnect"];
  if (r.IsDefined() && !r.IsNull()) {
    TRY(p.onlyKnown(r, "migration.reconnect",
                    {"initial_backoff_ms", "max_backoff_ms", "give_up_after_s"}));
    ms = m.reconnect.initial_backoff.count();
    TRY(p.integer(r, "migration.reconnect", "initial_backoff_ms", ms, 1, 60000));
    m.reconnect.initial_backoff = std::chrono::milliseconds(ms);
    ms = m.reconnect.max_backoff.count();
    TRY(p.integer(r, "migration.reconnect", "max_backoff_ms", ms, 1, 600000));
    m.reconnect.max_backoff = std::chrono::milliseconds(ms);
    long long s = m.reconnect.give_up_after.count();
    TRY(p.integer(r, "migration.reconnect", "give_up_after_s", s, 1, 86400));
    m.reconnect.give_up_after = std::chrono::seconds(s);
    if (m.reconnect.max_backoff < m.reconnect.initial_backoff) {
      return p.error("migration.reconnect.max_backoff_ms", r["max_backoff_ms"],
                     "must not be smaller than initial_backoff_ms");
    }
  }
  return {};
}

template <class T>
Status idList(const Parser& p, const YAML::Node& n, const std::string& full, std::vector<T>& out) {
  if (!n.IsDefined() || n.IsNull()) return {};
  if (!n.IsSequence()) return p.error(full, n, "must be a list of integers");
  for (std::size_t i = 0; i < n.size(); ++i) {
    long long v = 0;
    if (!n[i].IsScalar() || !YAML::convert<long long>::decode(n[i], v) || v < 0 ||
        v > 4294967294LL) {
      return p.error(full + "[" + std::to_string(i) + "]", n[i],
                     "must be a non-negative integer id");
    }
    out.push_back(static_cast<T>(v));
  }
  return {};
}

Status parseHandshake(const Parser& p, const YAML::Node& root, Config& c) {
  YAML::Node n = root["handshake"];
  if (!n.IsDefined() || n.IsNull()) return {};
  TRY(p.onlyKnown(n, "handshake", {"allowed_uids", "allowed_gids", "socket_mode"}));
  TRY(idList(p, n["allowed_uids"], "handshake.allowed_uids", c.handshake.allowed_uids));
  TRY(idList(p, n["allowed_gids"], "handshake.allowed_gids", c.handshake.allowed_gids));
  YAML::Node mode = n["socket_mode"];
  if (mode.IsDefined() && !mode.IsNull()) {
    std::string text = mode.IsScalar() ? mode.Scalar() : "";
    char* end = nullptr;
    unsigned long v = std::strtoul(text.c_str(), &end, 8);
    if (text.empty() || *end != '\0' || v > 0777) {
      return p.error("handshake.socket_mode", mode,
                     "must be an octal mode like \"0660\", got '" + text + "'");
    }
    c.handshake.socket_mode = static_cast<unsigned>(v);
  }
  return {};
}

}  // namespace

Result<Config> parseConfig(std::string_view yaml_text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    return fail(Errc::kConfig, source,
                "line " + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  }
  Parser p(source);
  if (!root.IsDefined() || root.IsNull()) return fail(Errc::kConfig, source, "the config is empty");
  Config c;
  try {
    TRY(rejectDuplicateKeys(p, root, ""));
    TRY(p.onlyKnown(root, "",
                    {"node_name", "listen", "tls", "state_dir", "handshake_dir", "log_level",
                     "log_format", "control_token_file", "control_tls", "migration", "handshake"}));
    TRY(p.string(root, "", "node_name", c.node_name, true));
    TRY(parseListen(p, root, c));
    YAML::Node tls = root["tls"];
    if (!tls.IsDefined() || tls.IsNull())
      return p.error("tls", root, "is required (ca_file, cert_file, key_file)");
    TRY(p.onlyKnown(tls, "tls", {"ca_file", "cert_file", "key_file"}));
    TRY(p.string(tls, "tls", "ca_file", c.tls.ca_file, true));
    TRY(p.string(tls, "tls", "cert_file", c.tls.cert_file, true));
    TRY(p.string(tls, "tls", "key_file", c.tls.key_file, true));
    TRY(p.string(root, "", "state_dir", c.state_dir));
    TRY(p.string(root, "", "handshake_dir", c.handshake_dir));
    for (auto [key, value] :
         {std::pair{"state_dir", &c.state_dir}, std::pair{"handshake_dir", &c.handshake_dir}}) {
      if (value->empty() || value->front() != '/')
        return p.error(key, root[key], "must be an absolute path");
    }
    TRY(p.string(root, "", "log_level", c.log_level));
    if (!log::parseLevel(c.log_level)) {
      return p.error("log_level", root["log_level"],
                     "must be debug, info, warn or error, got '" + c.log_level + "'");
    }
    TRY(p.string(root, "", "log_format", c.log_format));
    if (!log::parseFormat(c.log_format)) {
      return p.error("log_format", root["log_format"],
                     "must be logfmt or json, got '" + c.log_format + "'");
    }
    TRY(p.string(root, "", "control_token_file", c.control_token_file));
    if (YAML::Node ct = root["control_tls"]; ct.IsDefined() && !ct.IsNull()) {
      TRY(p.onlyKnown(ct, "control_tls", {"cert_file", "key_file", "client_ca_file"}));
      TRY(p.string(ct, "control_tls", "cert_file", c.control_tls.cert_file, true));
      TRY(p.string(ct, "control_tls", "key_file", c.control_tls.key_file, true));
      TRY(p.string(ct, "control_tls", "client_ca_file", c.control_tls.client_ca_file, true));
      if (c.control_listen.rfind("unix:", 0) == 0) {
        return p.error(
            "control_tls", ct,
            "needs a host:port listen.control (a UNIX socket is guarded by its file mode)");
      }
    }
    TRY(parseMigration(p, root, c));
    TRY(parseHandshake(p, root, c));
  } catch (const YAML::Exception& e) {
    return fail(Errc::kConfig, source, "line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  return c;
}

Result<Config> loadConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    return fail(Errc::kConfig, path,
                "cannot read the config file: " + std::string(std::strerror(errno)));
  std::stringstream text;
  text << in.rdbuf();
  auto c = parseConfig(text.str(), path);
  if (!c) return c;
  std::vector<std::pair<std::string, std::string>> files = {{"tls.ca_file", c->tls.ca_file},
                                                            {"tls.cert_file", c->tls.cert_file},
                                                            {"tls.key_file", c->tls.key_file}};
  if (!c->control_token_file.empty())
    files.emplace_back("control_token_file", c->control_token_file);
  if (!c->control_tls.cert_file.empty()) {
    files.emplace_back("control_tls.cert_file", c->control_tls.cert_file);
    files.emplace_back("control_tls.key_file", c->control_tls.key_file);
    files.emplace_back("control_tls.client_ca_file", c->control_tls.client_ca_file);
  }
  for (const auto& [key, file] : files) {
    if (::access(file.c_str(), R_OK) != 0) {
      return fail(Errc::kConfig, path,
                  "key '" + key + "': cannot read '" + file + "': " + std::strerror(errno));
    }
  }
  return c;
}

}  // namespace lazymig::config

#include "base/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace lazymig::log {
namespace {

std::atomic<Level> g_level{Level::kInfo};
std::atomic<Format> g_format{Format::kLogfmt};
std::atomic<int> g_fd{STDERR_FILENO};

std::string_view levelName(Level l) {
  switch (l) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
  }
  return "info";
}

void appendValue(std::string& out, std::string_view v) {
  bool quote = v.empty();
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || c < 0x20) quote = true;
  }
  if (!quote) {
    out += v;
    return;
  }
  out += '"';
  for (char c : v) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  out += '"';
}

void appendJsonString(std::string& out, std::string_view v) {
  out += '"';
  for (char c : v) {
    unsigned char u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  out += '"';
}

void appendTimestamp(std::string& out) {
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto micros =
      std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() %
      1000000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<long long>(micros));
  out += buf;
}

}  // namespace

void setLevel(Level level) { g_level.store(level); }
Level level() { return g_level.load(); }
void setOutputFd(int fd) { g_fd.store(fd); }
void setFormat(Format format) { g_format.store(format); }

std::optional<Format> parseFormat(std::string_view name) {
  if (name == "logfmt") return Format::kLogfmt;
  if (name == "json") return Format::kJson;
  return std::nullopt;
}

std::optional<Level> parseLevel(std::string_view name) {
  if (name == "debug") return Level::kDebug;
  if (name == "info") return Level::kInfo;
  if (name == "warn" || name == "warning") return Level::kWarn;
  if (name == "error") return Level::kError;
  return std::nullopt;
}

Logger Logger::with(std::initializer_list<Field> more) const {
  Logger out = *this;
  out.base_.insert(out.base_.end(), more.begin(), more.end());
  return out;
}

namespace {

std::string logfmtLine(std::string_view ts, Level lvl, std::string_view msg,
                       std::initializer_list<const std::vector<Field>*> lists) {
  std::string line;
  line.reserve(160);
  line += "ts=";
  line += ts;
  line += " level=";
  line += levelName(lvl);
  line += " msg=";
  appendValue(line, msg);
  for (const auto* list : lists) {
    for (const Field& f : *list) {
      line += ' ';
      line += f.key;
      line += '=';
      appendValue(line, f.value);
    }
  }
  return line;
}

std::string jsonLine(std::string_view ts, Level lvl, std::string_view msg,
                     std::initializer_list<const std::vector<Field>*> lists) {
  std::string line;
  line.reserve(200);
  line += "{\"ts\":";
  appendJsonString(line, ts);
  line += ",\"level\":";
  appendJsonString(line, levelName(lvl));
  line += ",\"msg\":";
  appendJsonString(line, msg);
  for (const auto* list : lists) {
    for (const Field& f : *list) {
      line += ',';
      appendJsonString(line, f.key);
      line += ':';
      if (f.bare)
        line += f.value;
      else
        appendJsonString(line, f.value);
    }
  }
  line += '}';
  return line;
}

}  // namespace

void Logger::write(Level lvl, std::string_view msg, const std::vector<Field>& fields) const {
  if (lvl < g_level.load(std::memory_order_relaxed)) return;
  std::string ts;
  appendTimestamp(ts);
  std::string line = g_format.load(std::memory_order_relaxed) == Format::kJson
                         ? jsonLine(ts, lvl, msg, {&base_, &fields})
                         : logfmtLine(ts, lvl, msg, {&base_, &fields});
  line += '\n';
  // One write(2) per line keeps lines from concurrent threads whole.
  ssize_t ignored = ::write(g_fd.load(std::memory_order_relaxed), line.data(), line.size());
  (void)ignored;
}

const Logger& root() {
  static const Logger logger;
  return logger;
}

}  // namespace lazymig::log

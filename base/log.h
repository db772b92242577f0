// Structured logs: one line per event (ts, level, msg, then the fields), as logfmt or as one
// JSON object per line (log_format in the config).
// A Logger carries fields that every line about one subject repeats (migration, role, peer).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace lazymig::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

enum class Format { kLogfmt, kJson };

void setLevel(Level level);
void setFormat(Format format);
std::optional<Format> parseFormat(std::string_view name);
Level level();
std::optional<Level> parseLevel(std::string_view name);
// Lines go to stderr by default; a test may redirect them to a file descriptor it owns.
void setOutputFd(int fd);

struct Field {
  std::string key;
  std::string value;
  bool bare = false;  // a number or a boolean: unquoted in JSON
  Field(std::string_view k, std::string_view v) : key(k), value(v) {}
  Field(std::string_view k, const std::string& v) : key(k), value(v) {}
  Field(std::string_view k, const char* v) : key(k), value(v) {}
  template <class T, class = std::enable_if_t<std::is_arithmetic_v<T>>>
  Field(std::string_view k, T v) : key(k), value(format(v)), bare(true) {}

 private:
  template <class T>
  static std::string format(T v) {
    if constexpr (std::is_same_v<T, bool>)
      return v ? "true" : "false";
    else
      return std::to_string(v);
  }
};

class Logger {
 public:
  Logger() = default;
  explicit Logger(std::vector<Field> base) : base_(std::move(base)) {}
  Logger with(std::initializer_list<Field> more) const;

  void debug(std::string_view msg, std::initializer_list<Field> fields = {}) const {
    write(Level::kDebug, msg, fields);
  }
  void info(std::string_view msg, std::initializer_list<Field> fields = {}) const {
    write(Level::kInfo, msg, fields);
  }
  void warn(std::string_view msg, std::initializer_list<Field> fields = {}) const {
    write(Level::kWarn, msg, fields);
  }
  void error(std::string_view msg, std::initializer_list<Field> fields = {}) const {
    write(Level::kError, msg, fields);
  }
  void write(Level lvl, std::string_view msg, std::initializer_list<Field> fields) const {
    write(lvl, msg, std::vector<Field>(fields));
  }
  void write(Level lvl, std::string_view msg, const std::vector<Field>& fields) const;

 private:
  std::vector<Field> base_;
};

// The process-wide logger with no subject fields.
const Logger& root();

}  // namespace lazymig::log

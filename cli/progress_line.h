// Live progress of one migration for a person watching: on a terminal one line redrawn in
// place (pages done/total, MiB/s, faults/s, fault p99, ETA); elsewhere (a log, a pipe) the
// same line printed whole every `plain_every` (and at the end), so logs stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace lazymig::cli {

class ProgressLine {
 public:
  using Clock = std::chrono::steady_clock;
  ProgressLine(std::FILE* out, bool terminal, std::chrono::milliseconds plain_every)
      : out_(out), terminal_(terminal), plain_every_(plain_every) {}
  // Whether `out` is a terminal that can redraw a line in place.
  static bool isTerminal(std::FILE* out);

  // One sample: a migration object as GET /v1/migrations/{id} returns it.
  void update(const nlohmann::json& migration, Clock::time_point now = Clock::now());
  // Ends the line on a terminal, so that what follows starts on a line of its own.
  void finish();
  // The text of the line for `migration`, with rates measured since the previous sample.
  std::string render(const nlohmann::json& migration, Clock::time_point now);

 private:
  struct Sample {
    Clock::time_point at;
    std::uint64_t pages = 0;
    std::uint64_t faults = 0;
  };
  std::FILE* out_;
  bool terminal_;
  std::chrono::milliseconds plain_every_;
  std::optional<Sample> previous_;
  std::optional<Clock::time_point> last_plain_;
  bool drawn_ = false;
  bool final_printed_ = false;  // off a terminal
};

}  // namespace lazymig::cli

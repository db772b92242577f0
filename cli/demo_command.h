// `lazymig demo`: every option of the demo is defined in addDemoCommand (demo_command.cc),
// in one place, next to how the summary is printed.
#pragma once

#include <string>

#include "cli/demo.h"

namespace CLI {
class App;
}

namespace lazymig::cli {

// The `demo` command of `app`. CLI11 writes the flags into this object, so it stays put.
class DemoCommand {
 public:
  explicit DemoCommand(CLI::App& app);
  DemoCommand(const DemoCommand&) = delete;
  DemoCommand& operator=(const DemoCommand&) = delete;

  bool parsed() const;
  // Runs the demo; `json_output` (the global -o json / --json) forces the report's JSON line.
  int run(bool json_output);

 private:
  CLI::App* command_ = nullptr;
  DemoOptions options_;
  std::string size_text_ = "1GiB";
  std::string extra_yaml_file_;
};

}  // namespace lazymig::cli

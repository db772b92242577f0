// A child process the demo and tests start (an agent, a test VM): killed and reaped when the
// owner lets go of it, so that no failure path leaves processes behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "sys/unique_fd.h"

namespace lazymig::cli {

class ChildProcess {
 public:
  // Starts argv[0] (a path) with stdout and stderr appended to `log_file` (or inherited when
  // empty; with capture_stdout, stdout goes to a pipe read by output()).
  static Result<ChildProcess> spawn(const std::vector<std::string>& argv,
                                    const std::string& log_file, bool capture_stdout = false);
  ChildProcess() = default;
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0 && !exit_status_; }
  // Waits up to `timeout`; returns the exit status (as from waitpid) or nothing on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  void signal(int sig) const;
  // SIGTERM, then SIGKILL after `grace`.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds(5));
  // Everything the child wrote to stdout (capture_stdout only), after it exited.
  const std::string& output();

 private:
  void drain();
  pid_t pid_ = -1;
  sys::UniqueFd pidfd_;
  sys::UniqueFd stdout_;
  std::string captured_;
  std::optional<int> exit_status_;
};

// Human-readable exit status ("exit 3", "killed by SIGKILL").
std::string describeStatus(int status);

}  // namespace lazymig::cli

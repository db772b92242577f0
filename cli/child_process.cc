#include "cli/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "sys/memory_fd.h"

namespace lazymig::cli {

Result<ChildProcess> ChildProcess::spawn(const std::vector<std::string>& argv,
                                         const std::string& log_file, bool capture_stdout) {
  int pipefd[2] = {-1, -1};
  if (capture_stdout && ::pipe2(pipefd, O_CLOEXEC) != 0) return failSys("pipe2");
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return failSys("fork", argv[0]);
  if (pid == 0) {
    // Die with the parent: a crashed demo must not leave agents running.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (!log_file.empty()) {
      int fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        if (!capture_stdout) ::dup2(fd, STDOUT_FILENO);
        ::dup2(fd, STDERR_FILENO);
      }
    }
    if (capture_stdout) ::dup2(pipefd[1], STDOUT_FILENO);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execv(args[0], args.data());
    std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ChildProcess c;
  c.pid_ = pid;
  if (capture_stdout) {
    ::close(pipefd[1]);
    c.stdout_.reset(pipefd[0]);
  }
  auto pidfd = sys::pidfdOpen(pid);
  if (pidfd) c.pidfd_ = std::move(*pidfd);
  return c;
}

ChildProcess::ChildProcess(ChildProcess&& o) noexcept
    : pid_(o.pid_),
      pidfd_(std::move(o.pidfd_)),
      stdout_(std::move(o.stdout_)),
      captured_(std::move(o.captured_)),
      exit_status_(o.exit_status_) {
  o.pid_ = -1;
}

ChildProcess& ChildProcess::operator=(ChildProcess&& o) noexcept {
  if (this != &o) {
    stop(std::chrono::milliseconds(0));
    pid_ = o.pid_;
    pidfd_ = std::move(o.pidfd_);
    stdout_ = std::move(o.stdout_);
    captured_ = std::move(o.captured_);
    exit_status_ = o.exit_status_;
    o.pid_ = -1;
  }
  return *this;
}

ChildProcess::~ChildProcess() { stop(std::chrono::milliseconds(0)); }

void ChildProcess::drain() {
  if (!stdout_) return;
  char buf[4096];
  for (;;) {
    pollfd p{stdout_.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return;
    ssize_t n = ::read(stdout_.get(), buf, sizeof buf);
    if (n <= 0) {
      stdout_.reset();
      return;
    }
    captured_.append(buf, static_cast<std::size_t>(n));
  }
}

std::optional<int> ChildProcess::wait(std::chrono::milliseconds timeout) {
  if (exit_status_) return exit_status_;
  if (pid_ <= 0) return std::nullopt;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    drain();
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      drain();
      exit_status_ = status;
      return status;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    // Sleep until the child exits or writes, not a fixed period.
    pollfd fds[2] = {{pidfd_.get(), POLLIN, 0}, {stdout_ ? stdout_.get() : -1, POLLIN, 0}};
    ::poll(fds, 2, static_cast<int>(std::min<long long>(left.count(), 100)));
  }
}

void ChildProcess::signal(int sig) const {
  if (pid_ > 0 && !exit_status_) ::kill(pid_, sig);
}

void ChildProcess::stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0 || exit_status_) return;
  if (grace.count() > 0) {
    signal(SIGTERM);
    if (wait(grace)) return;
  }
  signal(SIGKILL);
  wait(std::chrono::seconds(30));
}

const std::string& ChildProcess::output() {
  drain();
  return captured_;
}

std::string describeStatus(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by ") + sigabbrev_np(WTERMSIG(status));
  return "status " + std::to_string(status);
}

}  // namespace lazymig::cli

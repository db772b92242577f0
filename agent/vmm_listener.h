// The UNIX socket a VMM connects to and hands over guest memory on: the destination's
// Firecracker uffd handshake, or the source's memory handover. One thread per socket:
// accepting is rare, and a slow or hostile VMM must not stall any event loop.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/log.h"
#include "sys/event_fd.h"
#include "sys/unix_socket.h"
#include "vmm/handshake.h"

namespace lazymig::agent {

// Who may hand memory over: empty lists allow any uid/gid; a pid, when given, must match.
struct CredentialPolicy {
  std::vector<uid_t> allowed_uids;
  std::vector<gid_t> allowed_gids;
  std::optional<pid_t> required_pid;
};

Status checkCredentials(const CredentialPolicy& policy, const sys::PeerCredentials& cred);

class VmmListener {
 public:
  // Returns an error to refuse the handover (the connection is closed, the listener keeps
  // listening); on success it keeps `connection` open for as long as it needs.
  using OnHandshake = std::function<Status(
      vmm::Handshake handshake, const sys::PeerCredentials& peer, sys::UnixSocket connection)>;
  using OnRefused = std::function<void(const std::string& reason, const Error& error)>;

  static Result<std::unique_ptr<VmmListener>> start(const std::string& path, unsigned mode,
                                                    std::chrono::milliseconds timeout,
                                                    CredentialPolicy policy,
                                                    OnHandshake on_handshake, OnRefused on_refused,
                                                    log::Logger logger);
  ~VmmListener();
  void stop();
  const std::string& path() const { return path_; }

 private:
  VmmListener(std::string path, sys::UnixSocket socket, sys::EventFd stop,
              std::chrono::milliseconds timeout, CredentialPolicy policy, OnHandshake on_handshake,
              OnRefused on_refused, log::Logger logger);
  void run();
  void serve(sys::UnixSocket conn);

  std::string path_;
  sys::UnixSocket socket_;
  sys::EventFd stop_;
  std::chrono::milliseconds timeout_;
  CredentialPolicy policy_;
  OnHandshake on_handshake_;
  OnRefused on_refused_;
  log::Logger log_;
  std::thread thread_;
};

}  // namespace lazymig::agent

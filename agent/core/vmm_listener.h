// The UNIX socket a VMM connects to and hands over guest memory on: the destination's
// Firecracker uffd handshake, or the source's memory handover. One thread accepts, and each
// connection gets its own short-lived thread: accepting is rare, a handshake is bounded by
// its timeout, and a slow or hostile client (an idle connection, malformed JSON) must delay
// neither the real VMM nor any event loop.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
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
  // listening); on success it keeps `connection` open for as long as it needs. Never called
  // for two connections at once.
  using OnHandshake = std::function<Status(
      vmm::Handshake handshake, const sys::PeerCredentials& peer, sys::UnixSocket connection)>;
  using OnRefused = std::function<void(const std::string& reason, const Error& error)>;

  // At most this many connections are served at once; more are refused at once ("busy").
  static constexpr std::size_t kMaxConnections = 8;

  // `receiver`: which side's handshake the VMM sends (vmm::receiveHandshake).
  static Result<std::unique_ptr<VmmListener>> start(const std::string& path, vmm::Receiver receiver,
                                                    unsigned mode,
                                                    std::chrono::milliseconds timeout,
                                                    CredentialPolicy policy,
                                                    OnHandshake on_handshake, OnRefused on_refused,
                                                    log::Logger logger);
  ~VmmListener();
  void stop();
  const std::string& path() const { return path_; }

 private:
  // The thread serving one accepted connection.
  struct Worker {
    std::thread thread;
    bool done = false;  // guarded by workers_mu_
  };

  VmmListener(std::string path, sys::UnixSocket socket, sys::EventFd stop,
              std::chrono::milliseconds timeout, CredentialPolicy policy, OnHandshake on_handshake,
              OnRefused on_refused, log::Logger logger);
  void run();
  void dispatch(sys::UnixSocket conn);
  void reapFinished();
  void serve(sys::UnixSocket conn);
  void refuse(const std::string& reason, const Error& e);

  std::string path_;
  sys::UnixSocket socket_;
  sys::EventFd stop_;
  std::chrono::milliseconds timeout_;
  vmm::Receiver receiver_ = vmm::Receiver::kDestination;
  CredentialPolicy policy_;
  OnHandshake on_handshake_;
  OnRefused on_refused_;
  log::Logger log_;
  std::thread thread_;
  std::mutex workers_mu_;
  std::list<Worker> workers_;
  std::mutex handshake_mu_;  // one on_handshake_ at a time
  std::atomic<bool> stopping_{false};
};

}  // namespace lazymig::agent

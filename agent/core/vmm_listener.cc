#include "agent/core/vmm_listener.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>

namespace lazymig::agent {

Status checkCredentials(const CredentialPolicy& policy, const sys::PeerCredentials& cred) {
  auto allowed = [](const auto& list, auto v) {
    return list.empty() || std::find(list.begin(), list.end(), v) != list.end();
  };
  if (!allowed(policy.allowed_uids, cred.uid)) {
    return fail(Errc::kAuth, "vmm handshake",
                "uid " + std::to_string(cred.uid) + " is not in handshake.allowed_uids");
  }
  if (!allowed(policy.allowed_gids, cred.gid)) {
    return fail(Errc::kAuth, "vmm handshake",
                "gid " + std::to_string(cred.gid) + " is not in handshake.allowed_gids");
  }
  if (policy.required_pid && *policy.required_pid != cred.pid) {
    return fail(Errc::kAuth, "vmm handshake",
                "pid " + std::to_string(cred.pid) + " is not the VMM pid " +
                    std::to_string(*policy.required_pid) + " the migration names");
  }
  return {};
}

Result<std::unique_ptr<VmmListener>> VmmListener::start(const std::string& path,
                                                        vmm::Receiver receiver, unsigned mode,
                                                        std::chrono::milliseconds timeout,
                                                        CredentialPolicy policy,
                                                        OnHandshake on_handshake,
                                                        OnRefused on_refused, log::Logger logger) {
  auto socket = sys::UnixSocket::listen(path, mode);
  if (!socket) return std::unexpected(socket.error());
  auto stop = sys::EventFd::create();
  if (!stop) return std::unexpected(stop.error());
  std::unique_ptr<VmmListener> out(
      new VmmListener(path, std::move(*socket), std::move(*stop), timeout, std::move(policy),
                      std::move(on_handshake), std::move(on_refused), std::move(logger)));
  out->receiver_ = receiver;
  out->thread_ = std::thread([l = out.get()] { l->run(); });
  return out;
}

VmmListener::VmmListener(std::string path, sys::UnixSocket socket, sys::EventFd stop,
                         std::chrono::milliseconds timeout, CredentialPolicy policy,
                         OnHandshake on_handshake, OnRefused on_refused, log::Logger logger)
    : path_(std::move(path)),
      socket_(std::move(socket)),
      stop_(std::move(stop)),
      timeout_(timeout),
      policy_(std::move(policy)),
      on_handshake_(std::move(on_handshake)),
      on_refused_(std::move(on_refused)),
      log_(std::move(logger)) {}

VmmListener::~VmmListener() { stop(); }

void VmmListener::stop() {
  if (!thread_.joinable()) return;
  // The event stays readable: the acceptor and every worker still reading a handshake see it.
  stopping_ = true;
  stop_.signal();
  thread_.join();
  std::list<Worker> workers;
  {
    std::lock_guard lock(workers_mu_);
    workers.swap(workers_);
  }
  for (auto& w : workers) w.thread.join();
  ::unlink(path_.c_str());
}

void VmmListener::run() {
  for (;;) {
    pollfd fds[2] = {{socket_.get(), POLLIN, 0}, {stop_.pollFd(), POLLIN, 0}};
    int r = ::poll(fds, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || (fds[1].revents & POLLIN)) return;
    if (!(fds[0].revents & POLLIN)) continue;
    auto conn = socket_.accept();
    if (!conn) {
      log_.warn("accept on VMM socket failed", {{"error", conn.error().message()}});
      continue;
    }
    dispatch(std::move(*conn));
  }
}

void VmmListener::dispatch(sys::UnixSocket conn) {
  reapFinished();
  std::lock_guard lock(workers_mu_);
  if (workers_.size() >= kMaxConnections) {
    refuse("busy", Error::make(Errc::kState, "vmm handshake",
                               std::to_string(kMaxConnections) +
                                   " connections are already being served on " + path_));
    return;
  }
  auto& w = workers_.emplace_back();
  // A list node does not move, not even when stop() splices it away.
  w.thread = std::thread([this, &w, c = std::move(conn)]() mutable {
    serve(std::move(c));
    std::lock_guard done(workers_mu_);
    w.done = true;
  });
}

void VmmListener::reapFinished() {
  std::list<Worker> finished;
  {
    std::lock_guard lock(workers_mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      auto next = std::next(it);
      if (it->done) finished.splice(finished.end(), workers_, it);
      it = next;
    }
  }
  for (auto& w : finished) w.thread.join();
}

void VmmListener::refuse(const std::string& reason, const Error& e) {
  log_.warn("VMM handover refused", {{"reason", reason}, {"error", e.message()}});
  if (on_refused_) on_refused_(reason, e);
}

void VmmListener::serve(sys::UnixSocket conn) {
  auto cred = conn.peerCredentials();
  if (!cred) return refuse("credentials", cred.error());
  if (auto ok = checkCredentials(policy_, *cred); !ok) return refuse("credentials", ok.error());
  auto handshake = vmm::receiveHandshake(conn, timeout_, {}, stop_.pollFd(), receiver_);
  if (!handshake) {
    if (stopping_) return;  // cut short by stop(): not the client's fault
    return refuse("malformed", handshake.error());
  }
  std::lock_guard one_at_a_time(handshake_mu_);
  if (stopping_) return;  // a stopping migration must not take a VMM it cannot serve
  auto accepted = on_handshake_(std::move(*handshake), *cred, std::move(conn));
  if (!accepted) return refuse("rejected", accepted.error());
}

}  // namespace lazymig::agent

#include "agent/vmm_listener.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>

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

Result<std::unique_ptr<VmmListener>> VmmListener::start(const std::string& path, unsigned mode,
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
  stop_.signal();
  thread_.join();
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
    serve(std::move(*conn));
  }
}

void VmmListener::serve(sys::UnixSocket conn) {
  auto refuse = [&](const std::string& reason, const Error& e) {
    log_.warn("VMM handover refused", {{"reason", reason}, {"error", e.message()}});
    if (on_refused_) on_refused_(reason, e);
  };
  auto cred = conn.peerCredentials();
  if (!cred) return refuse("credentials", cred.error());
  if (auto ok = checkCredentials(policy_, *cred); !ok) return refuse("credentials", ok.error());
  auto handshake = vmm::receiveHandshake(conn, timeout_);
  if (!handshake) return refuse("malformed", handshake.error());
  auto accepted = on_handshake_(std::move(*handshake), *cred, std::move(conn));
  if (!accepted) return refuse("rejected", accepted.error());
}

}  // namespace lazymig::agent

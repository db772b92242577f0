#include "client/control_client.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cstring>
#include <memory>

#include "sys/unique_fd.h"

namespace lazymig::client {
namespace {

using Clock = std::chrono::steady_clock;

struct Target {
  bool unix_socket = false;
  bool tls = false;
  std::string path;
  std::string host;
  std::string port;
};

Result<Target> parseEndpoint(const std::string& endpoint) {
  Target t;
  if (endpoint.rfind("unix:", 0) == 0) {
    t.unix_socket = true;
    t.path = endpoint.substr(5);
    if (t.path.empty())
      return fail(Errc::kInvalidArgument, "control endpoint", "unix: needs a path");
    return t;
  }
  std::string rest = endpoint;
  if (rest.rfind("http://", 0) == 0) rest = rest.substr(7);
  if (rest.rfind("https://", 0) == 0) {
    rest = rest.substr(8);
    t.tls = true;
  }
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  auto colon = rest.rfind(':');
  if (colon == std::string::npos) {
    return fail(Errc::kInvalidArgument, "control endpoint",
                "'" + endpoint + "' is neither unix:/path nor host:port");
  }
  t.host = rest.substr(0, colon);
  if (t.host.size() > 1 && t.host.front() == '[') t.host = t.host.substr(1, t.host.size() - 2);
  t.port = rest.substr(colon + 1);
  return t;
}

Status waitFor(int fd, short events, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return fail(Errc::kTimeout, "control api", what + ": timed out");
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, static_cast<int>(left));
    if (r > 0) return {};
    if (r < 0 && errno != EINTR) return failSys("poll", what);
  }
}

Result<sys::UniqueFd> connectTo(const Target& t, const std::string& endpoint,
                                Clock::time_point deadline) {
  if (t.unix_socket) {
    sys::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (t.path.size() >= sizeof addr.sun_path)
      return fail(Errc::kInvalidArgument, "control endpoint", "path too long");
    std::memcpy(addr.sun_path, t.path.c_str(), t.path.size() + 1);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      return failSys("control api: connect", endpoint);
    }
    return fd;
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(t.host.c_str(), t.port.c_str(), &hints, &res);
  if (rc != 0)
    return fail(Errc::kInvalidArgument, "control api: resolve", endpoint + ": " + gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> owned(res, &::freeaddrinfo);
  // "localhost" may resolve to ::1 first while the agent listens on 127.0.0.1: try each.
  Error last = fail(Errc::kSystem, "control api: connect", endpoint + ": no address").error();
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    sys::UniqueFd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    int r = ::connect(fd.get(), ai->ai_addr, ai->ai_addrlen);
    if (r != 0 && errno != EINPROGRESS) {
      last = failSys("control api: connect", endpoint).error();
      continue;
    }
    if (r != 0) {
      if (auto ok = waitFor(fd.get(), POLLOUT, deadline, "connect " + endpoint); !ok)
        return std::unexpected(ok.error());
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        last = failSys("control api: connect", endpoint, err).error();
        continue;
      }
    }
    return fd;
  }
  return std::unexpected(last);
}

std::string tlsErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    out += (out.empty() ? "" : "; ") + std::string(buf);
  }
  return out.empty() ? "TLS error" : out;
}

// One HTTPS exchange, blocking with socket timeouts (the CLI sends one request per
// connection): TLS 1.3, the agent's certificate checked against `ca` and the host name.
Result<std::string> exchangeTls(int fd, const std::string& host, const std::string& ca,
                                const std::string& cert, const std::string& key,
                                const std::string& request, Clock::time_point deadline,
                                const std::string& endpoint) {
  auto left =
      std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now()).count();
  timeval tv{static_cast<time_t>(std::max<long long>(left, 1000) / 1000000),
             static_cast<suseconds_t>(std::max<long long>(left, 1000) % 1000000)};
  int flags = ::fcntl(fd, F_GETFL);
  ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()),
                                                        &SSL_CTX_free);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  if (ca.empty() || SSL_CTX_load_verify_locations(ctx.get(), ca.c_str(), nullptr) != 1) {
    return fail(Errc::kConfig, "control api: --cacert",
                (ca.empty() ? std::string("required for https") : ca) +
                    (ca.empty() ? "" : ": " + tlsErrors()));
  }
  if (!cert.empty() &&
      (SSL_CTX_use_certificate_chain_file(ctx.get(), cert.c_str()) != 1 ||
       SSL_CTX_use_PrivateKey_file(ctx.get(), key.c_str(), SSL_FILETYPE_PEM) != 1)) {
    return fail(Errc::kConfig, "control api: --cert/--key", cert + ": " + tlsErrors());
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), &SSL_free);
  SSL_set_fd(ssl.get(), fd);
  SSL_set_tlsext_host_name(ssl.get(), host.c_str());
  SSL_set1_host(ssl.get(), host.c_str());
  if (SSL_connect(ssl.get()) != 1)
    return fail(Errc::kProtocol, "control api: TLS", endpoint + ": " + tlsErrors());
  if (SSL_write(ssl.get(), request.data(), static_cast<int>(request.size())) <= 0) {
    return fail(Errc::kProtocol, "control api: TLS",
                endpoint + ": the agent closed the connection (" + tlsErrors() +
                    "); is this client's certificate accepted?");
  }
  std::string raw;
  char buf[16384];
  for (int n; (n = SSL_read(ssl.get(), buf, sizeof buf)) > 0;) {
    raw.append(buf, static_cast<std::size_t>(n));
    if (raw.size() > (16u << 20))
      return fail(Errc::kProtocol, "control api", "response larger than 16 MiB");
  }
  if (raw.empty()) {
    return fail(
        Errc::kProtocol, "control api: TLS",
        endpoint + ": no response (" + tlsErrors() + "); is this client's certificate accepted?");
  }
  return raw;
}

Result<HttpResponse> parseResponse(const std::string& raw, const std::string& endpoint) {
  auto end = raw.find("\r\n\r\n");
  if (raw.compare(0, 5, "HTTP/") != 0 || end == std::string::npos) {
    return fail(Errc::kProtocol, "control api", endpoint + ": not an HTTP response");
  }
  HttpResponse resp;
  resp.status = std::atoi(raw.c_str() + raw.find(' ') + 1);
  std::string headers = raw.substr(0, end);
  for (auto& c : headers) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string body = raw.substr(end + 4);
  if (headers.find("transfer-encoding: chunked") != std::string::npos) {
    std::string out;
    std::size_t pos = 0;
    for (;;) {
      auto line_end = body.find("\r\n", pos);
      if (line_end == std::string::npos) break;
      std::size_t n = std::strtoul(body.c_str() + pos, nullptr, 16);
      if (n == 0) break;
      out += body.substr(line_end + 2, n);
      pos = line_end + 2 + n + 2;
    }
    body = std::move(out);
  } else if (auto cl = headers.find("content-length:"); cl != std::string::npos) {
    body.resize(
        std::min<std::size_t>(body.size(), std::strtoul(headers.c_str() + cl + 15, nullptr, 10)));
  }
  resp.body = std::move(body);
  return resp;
}

}  // namespace

Result<HttpResponse> ControlClient::get(const std::string& path) const {
  return request("GET", path, "");
}
Result<HttpResponse> ControlClient::post(const std::string& path, const std::string& body) const {
  return request("POST", path, body);
}
Result<HttpResponse> ControlClient::del(const std::string& path) const {
  return request("DELETE", path, "");
}

Result<HttpResponse> ControlClient::request(const std::string& method, const std::string& path,
                                            const std::string& body) const {
  auto deadline = Clock::now() + timeout_;
  auto target = parseEndpoint(endpoint_);
  if (!target) return std::unexpected(target.error());
  auto fd = connectTo(*target, endpoint_, deadline);
  if (!fd) return std::unexpected(fd.error());
  const std::string what = method + ' ' + path;  // names the request in errors
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: " +
                    (target->unix_socket ? std::string("localhost") : target->host) +
                    "\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n";
  if (!bearer_.empty()) req += "Authorization: Bearer " + bearer_ + "\r\n";
  req += "\r\n" + body;
  if (target->tls) {
    auto raw = exchangeTls(fd->get(), target->host, tls_ca_, tls_cert_, tls_key_, req, deadline,
                           endpoint_);
    if (!raw) return std::unexpected(raw.error());
    return parseResponse(*raw, endpoint_);
  }
  for (std::size_t off = 0; off < req.size();) {
    if (auto ok = waitFor(fd->get(), POLLOUT, deadline, what); !ok)
      return std::unexpected(ok.error());
    ssize_t n = ::send(fd->get(), req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) return failSys("control api: send", endpoint_);
    if (n > 0) off += static_cast<std::size_t>(n);
  }
  std::string raw;
  char buf[16384];
  for (;;) {
    if (auto ok = waitFor(fd->get(), POLLIN, deadline, what); !ok)
      return std::unexpected(ok.error());
    ssize_t n = ::recv(fd->get(), buf, sizeof buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n < 0) return failSys("control api: recv", endpoint_);
    if (n == 0) break;
    raw.append(buf, static_cast<std::size_t>(n));
    if (raw.size() > (16u << 20))
      return fail(Errc::kProtocol, "control api", "response larger than 16 MiB");
  }
  return parseResponse(raw, endpoint_);
}

}  // namespace lazymig::client

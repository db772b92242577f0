#include "agent/daemon/control_api.h"

#include "base/strict_json.h"

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "agent/core/migration_spec.h"
#include "agent/daemon/json_error_pages.h"
#include "agent/source/source_migration.h"
#include "loop/assert_on_loop.h"
#include "sys/unix_socket.h"

namespace lazymig::agent {
namespace {

constexpr std::size_t kMaxBody = 1 << 20;
// Up to this, a body is read and answered by route() with its exact size; beyond it libevent
// stops reading and answers itself, with the page json_error_pages.h turns into JSON.
constexpr std::size_t kTransportMaxBody = 8 * kMaxBody;
constexpr std::string_view kMigrationsPrefix = "/v1/migrations/";

const char* reasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 413:
      return "Payload Too Large";
    case 503:
      return "Service Unavailable";
    case 507:
      return "Insufficient Storage";
    default:
      return "Internal Server Error";
  }
}

bool queryFlag(evhttp_request* req, const char* name) {
  const char* query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
  if (query == nullptr) return false;
  auto params = loop::newKeyValues();
  if (evhttp_parse_query_str(query, params.get()) != 0) return false;
  const char* v = evhttp_find_header(params.get(), name);
  return v != nullptr && (std::string_view(v) == "true" || std::string_view(v) == "1");
}

}  // namespace

Result<std::unique_ptr<ControlApi>> ControlApi::start(transport::EventLoop& loop,
                                                      const std::string& listen, Registry& registry,
                                                      Backend backend, std::string bearer_token,
                                                      std::shared_ptr<transport::TlsContext> tls) {
  LAZYMIG_ASSERT_ON_LOOP(loop);
  std::unique_ptr<ControlApi> api(
      new ControlApi(loop, registry, std::move(backend), std::move(bearer_token)));
  api->tls_ = std::move(tls);
  api->http_.reset(evhttp_new(loop.base()));
  if (!api->http_) return fail(Errc::kSystem, "evhttp_new", "control api");
  evhttp_set_max_body_size(api->http_.get(), kTransportMaxBody);
  // Every method reaches route(), which answers the ones a path does not take with a JSON 405.
  evhttp_set_allowed_methods(api->http_.get(),
                             EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE | EVHTTP_REQ_PUT |
                                 EVHTTP_REQ_PATCH | EVHTTP_REQ_HEAD | EVHTTP_REQ_OPTIONS);
  evhttp_set_gencb(api->http_.get(), &ControlApi::onRequest, api.get());
  // Every connection gets our bufferevent (TLS or plain), whose output is watched for
  // libevent's own HTML error pages.
  evhttp_set_bevcb(api->http_.get(), &ControlApi::newBufferevent, api.get());
  // A body over the limit is read to its end (and dropped) before the 413 goes out: a client
  // still writing it would otherwise meet a reset and never read the answer.
  evhttp_set_flags(api->http_.get(), EVHTTP_SERVER_LINGERING_CLOSE);
  if (listen.rfind("unix:", 0) == 0) {
    api->unix_path_ = listen.substr(5);
    // Owner and group only: the control API creates migrations that hand out guest memory.
    auto sock = sys::UnixSocket::listen(api->unix_path_, 0660, 64);
    if (!sock) return std::unexpected(sock.error());
    if (auto ok = sock->setNonBlocking(true); !ok) return std::unexpected(ok.error());
    // evhttp closes the descriptor it accepts on when it is freed (LEV_OPT_CLOSE_ON_FREE), so
    // it gets a descriptor of its own: the socket's owner closing it too would close a number
    // another thread may have been handed in between.
    auto listening = sock->fd().duplicate();
    if (!listening) return std::unexpected(listening.error());
    if (evhttp_accept_socket_with_handle(api->http_.get(), listening->get()) == nullptr) {
      return fail(Errc::kSystem, "evhttp_accept_socket", listen);
    }
    (void)listening->releaseOwnership();
    api->bound_ = listen;
    return api;
  }
  auto colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return fail(Errc::kConfig, "listen.control",
                "'" + listen + "' is neither unix:/path nor host:port");
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
  auto port = static_cast<std::uint16_t>(std::stoul(listen.substr(colon + 1)));
  evhttp_bound_socket* bound = evhttp_bind_socket_with_handle(api->http_.get(), host.c_str(), port);
  if (bound == nullptr) return failSys("bind", "control api " + listen);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(evhttp_bound_socket_get_fd(bound), reinterpret_cast<sockaddr*>(&ss), &len);
  std::uint16_t actual = ss.ss_family == AF_INET6
                             ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                             : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  api->bound_ = listen.substr(0, colon) + ":" + std::to_string(actual);
  return api;
}

ControlApi::~ControlApi() {
  LAZYMIG_ASSERT_ON_LOOP(loop_);
  http_.reset();  // closes the listening socket before its path goes
  if (!unix_path_.empty()) ::unlink(unix_path_.c_str());
}

bufferevent* ControlApi::newBufferevent(event_base* base, void* arg) {
  auto* api = static_cast<ControlApi*>(arg);
  // With control_tls every TCP connection gets a TLS session; a client without a certificate
  // from the control CA fails the handshake and never reaches a handler.
  bufferevent* bev =
      api->tls_ && api->unix_path_.empty()
          ? bufferevent_openssl_socket_new(base, -1, api->tls_->newSession(),
                                           BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE)
          : bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (bev != nullptr) replaceLibeventErrorPages(bev, kMaxBody);
  return bev;
}

void ControlApi::onRequest(evhttp_request* req, void* arg) {
  static_cast<ControlApi*>(arg)->handle(req);
}

void ControlApi::reply(evhttp_request* req, int status, const nlohmann::json& body) {
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
  loop::EvBufferPtr buf(evbuffer_new());
  std::string text = body.dump() + "\n";
  evbuffer_add(buf.get(), text.data(), text.size());
  evhttp_send_reply(req, status, reasonPhrase(status), buf.get());
}

void ControlApi::replyError(evhttp_request* req, const ApiError& e) {
  reply(req, e.status, {{"error", {{"code", e.code}, {"message", e.message}}}});
}

void ControlApi::handle(evhttp_request* req) {
  LAZYMIG_ASSERT_ON_LOOP(loop_);
  const char* raw_path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
  std::string path = raw_path ? raw_path : "/";
  // Probes (kubelet, systemd) carry no token and learn nothing but up/ready.
  bool probe = path == "/healthz" || path == "/readyz";
  if (!bearer_token_.empty() && !probe) {
    const char* auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    std::string expected = "Bearer " + bearer_token_;
    if (auth == nullptr || std::strlen(auth) != expected.size() ||
        CRYPTO_memcmp(auth, expected.data(), expected.size()) != 0) {
      return replyError(req, {401, "unauthorized", "a valid bearer token is required"});
    }
  }
  route(req, path);
}

void ControlApi::route(evhttp_request* req, const std::string& path) {
  auto method = evhttp_request_get_command(req);
  if (path == "/healthz") return reply(req, 200, {{"status", "ok"}});
  if (path == "/readyz") {
    if (backend_.ready()) return reply(req, 200, {{"status", "ready"}});
    return replyError(req, {503, "not_ready", "the agent is starting or stopping"});
  }
  if (path == "/v1/agent") {
    if (method != EVHTTP_REQ_GET) return replyError(req, {405, "method_not_allowed", "use GET"});
    return reply(req, 200, backend_.agent_info());
  }
  if (path == "/v1/migrations" || path == "/v1/migrations/") {
    if (method == EVHTTP_REQ_GET) {
      nlohmann::json list = nlohmann::json::array();
      for (auto& m : registry_.all()) list.push_back(m->toJson());
      for (auto& h : registry_.history()) list.push_back(h);
      return reply(req, 200, {{"migrations", list}});
    }
    if (method != EVHTTP_REQ_POST) {
      return replyError(req, {405, "method_not_allowed", "use GET or POST"});
    }
    evbuffer* in = evhttp_request_get_input_buffer(req);
    std::size_t n = evbuffer_get_length(in);
    if (n > kMaxBody) {
      return replyError(req, {413, "too_large",
                              "the request body is " + std::to_string(n) + " bytes; the limit is " +
                                  std::to_string(kMaxBody)});
    }
    std::string text(n, '\0');
    evbuffer_copyout(in, text.data(), n);
    auto body = parseStrictJson(text, "the request body");
    if (!body) return replyError(req, {400, "bad_request", body.error().message()});
    bool created = false;
    auto m = backend_.create(*body, created);
    if (!m) return replyError(req, m.error());
    return reply(req, created ? 201 : 200, (*m)->toJson());
  }
  if (path.rfind(kMigrationsPrefix, 0) == 0 && path.size() > kMigrationsPrefix.size()) {
    return handleMigration(req, path.substr(kMigrationsPrefix.size()));
  }
  replyError(req, {404, "not_found", "no such path: " + path});
}

void ControlApi::handleMigration(evhttp_request* req, const std::string& id) {
  auto method = evhttp_request_get_command(req);
  constexpr std::string_view kPaused = "/paused";
  if (id.size() > kPaused.size() && id.ends_with(kPaused)) {
    return handlePaused(req, id.substr(0, id.size() - kPaused.size()));
  }
  if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_DELETE) {
    return replyError(req, {405, "method_not_allowed", "use GET or DELETE"});
  }
  auto m = registry_.find(id);
  if (!m) {
    // Already finished: GET shows the record, and cancelling it changes nothing.
    if (auto h = registry_.findHistory(id)) return reply(req, 200, *h);
    return replyError(req, {404, "not_found", "no migration with id '" + id + "'"});
  }
  if (method == EVHTTP_REQ_GET) return reply(req, 200, m->toJson());
  if (auto ok = m->cancel(queryFlag(req, "force")); !ok) {
    return replyError(req, {409, "conflict", ok.error().message()});
  }
  reply(req, 200, m->toJson());
}

// The orchestrator paused a live source VM: the source agent switches pre-copy to post-copy.
void ControlApi::handlePaused(evhttp_request* req, const std::string& id) {
  if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
    return replyError(req, {405, "method_not_allowed", "use POST"});
  }
  auto m = registry_.find(id);
  if (!m) {
    if (registry_.findHistory(id)) {
      return replyError(req, {409, "conflict", "migration '" + id + "' has finished"});
    }
    return replyError(req, {404, "not_found", "no migration with id '" + id + "'"});
  }
  auto* source = dynamic_cast<SourceMigration*>(m.get());
  if (source == nullptr) {
    return replyError(req, {409, "conflict",
                            "migration '" + id + "' is a " + m->role() +
                                ": only the source agent is told that the source VM paused"});
  }
  if (auto ok = source->paused(); !ok) {
    return replyError(req, {409, "conflict", ok.error().message()});
  }
  reply(req, 200, m->toJson());
}

}  // namespace lazymig::agent

// The control API (docs/control-api.md) on libevent's evhttp: JSON over HTTP/1.1, on a UNIX
// socket or loopback TCP. Runs on the control loop; handlers never block on the network.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/daemon/registry.h"
#include "base/error.h"
#include "loop/libevent_ptr.h"
#include "transport/connection.h"

struct evhttp_request;
struct bufferevent;
struct event_base;

namespace lazymig::agent {

// An API failure: the HTTP status and the stable code of docs/control-api.md.
struct ApiError {
  int status = 500;
  std::string code = "internal";
  std::string message;
};

class ControlApi {
 public:
  struct Backend {
    // Creates (or finds, for an idempotent repeat) the migration a POST body describes;
    // `created` tells which.
    std::function<std::expected<std::shared_ptr<Migration>, ApiError>(const nlohmann::json& body,
                                                                      bool& created)>
        create;
    std::function<nlohmann::json()> agent_info;
    std::function<bool()> ready;
  };

  // Loop-only: start, the handlers and the destructor run on the control loop's thread (the
  // evhttp lives on its base). `listen` is "unix:/path" or "host:port"; with `tls` (a server
  // context that requires client certificates) a TCP listener speaks HTTPS.
  static Result<std::unique_ptr<ControlApi>> start(
      transport::EventLoop& loop, const std::string& listen, Registry& registry, Backend backend,
      std::string bearer_token, std::shared_ptr<transport::TlsContext> tls = nullptr);
  ~ControlApi();
  const std::string& boundAddress() const { return bound_; }

 private:
  ControlApi(transport::EventLoop& loop, Registry& registry, Backend backend, std::string token)
      : loop_(loop),
        registry_(registry),
        backend_(std::move(backend)),
        bearer_token_(std::move(token)) {}
  static void onRequest(evhttp_request* req, void* arg);
  static bufferevent* newBufferevent(event_base* base, void* arg);
  void handle(evhttp_request* req);
  void route(evhttp_request* req, const std::string& path);
  void handleMigration(evhttp_request* req, const std::string& id);
  void handlePaused(evhttp_request* req, const std::string& id);
  void reply(evhttp_request* req, int status, const nlohmann::json& body);
  void replyError(evhttp_request* req, const ApiError& e);

  transport::EventLoop& loop_;
  Registry& registry_;
  Backend backend_;
  std::string bearer_token_;
  std::shared_ptr<transport::TlsContext> tls_;
  loop::EvHttpPtr http_;
  std::string unix_path_;
  std::string bound_;
};

}  // namespace lazymig::agent

// A blocking HTTP/1.1 client for the agent's control API (docs/control-api.md) on libcurl, used
// by the `lazymig` CLI, lazymig-testvm and the end-to-end tests. Endpoints are
// "unix:/path/to/control.sock", "http://host:port" (or plain "host:port"), or
// "https://host:port" (TLS 1.3; see setTls). One connection per request: the CLI sends a
// handful, and a fresh connection never meets an agent that closed an idle one.
#pragma once

#include <chrono>
#include <string>

#include "base/error.h"

namespace lazymig::client {

struct HttpResponse {
  int status = 0;
  std::string body;
};

class ControlClient {
 public:
  explicit ControlClient(std::string endpoint,
                         std::chrono::milliseconds timeout = std::chrono::seconds(10))
      : endpoint_(std::move(endpoint)), timeout_(timeout) {}
  // Sets "Authorization: Bearer <token>" on every request when non-empty.
  void setBearerToken(std::string token) { bearer_ = std::move(token); }
  // For https:// endpoints: the CA that signed the agent's control certificate (its SAN must
  // name the endpoint's host), and this client's certificate and key.
  void setTls(std::string ca_file, std::string cert_file, std::string key_file) {
    tls_ca_ = std::move(ca_file);
    tls_cert_ = std::move(cert_file);
    tls_key_ = std::move(key_file);
  }

  Result<HttpResponse> get(const std::string& path) const;
  Result<HttpResponse> post(const std::string& path, const std::string& json_body) const;
  Result<HttpResponse> del(const std::string& path) const;
  Result<HttpResponse> request(const std::string& method, const std::string& path,
                               const std::string& body) const;

 private:
  std::string endpoint_;
  std::chrono::milliseconds timeout_;
  std::string bearer_;
  std::string tls_ca_, tls_cert_, tls_key_;
};

}  // namespace lazymig::client

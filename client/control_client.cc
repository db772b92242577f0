#include "client/control_client.h"

#include <curl/curl.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>

namespace lazymig::client {
namespace {

constexpr std::size_t kMaxResponse = 16u << 20;

// Where a request goes, as libcurl wants it: a URL, and for unix: endpoints the socket path
// (the URL's host is then only the Host header).
struct Target {
  std::string base_url;
  std::string unix_path;
};

Result<Target> parseEndpoint(const std::string& endpoint) {
  if (endpoint.rfind("unix:", 0) == 0) {
    Target t{"http://localhost", endpoint.substr(5)};
    if (t.unix_path.empty())
      return fail(Errc::kInvalidArgument, "control endpoint", "unix: needs a path");
    return t;
  }
  std::string rest = endpoint;
  std::string scheme = "http://";
  if (rest.rfind("http://", 0) == 0) rest = rest.substr(7);
  if (rest.rfind("https://", 0) == 0) {
    rest = rest.substr(8);
    scheme = "https://";
  }
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.find(':') == std::string::npos || rest.find('/') != std::string::npos) {
    return fail(Errc::kInvalidArgument, "control endpoint",
                "'" + endpoint + "' is neither unix:/path, host:port nor https://host:port");
  }
  return Target{scheme + rest, ""};
}

void initCurlOnce() {
  // curl_global_init is not thread-safe; tests and the demo call the client from threads.
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct ResponseSink {
  std::string body;
  bool too_large = false;
};

std::size_t appendBody(char* data, std::size_t size, std::size_t n, void* out) {
  auto* sink = static_cast<ResponseSink*>(out);
  if (sink->body.size() + size * n > kMaxResponse) {
    sink->too_large = true;
    return 0;  // libcurl then fails the transfer with CURLE_WRITE_ERROR
  }
  sink->body.append(data, size * n);
  return size * n;
}

// The failure in words a person can act on: an agent that is not there is the usual one.
Error describe(CURLcode code, const char* detail, const std::string& endpoint,
               const std::string& what, bool body_too_large) {
  std::string why = detail[0] != '\0' ? detail : curl_easy_strerror(code);
  switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
      return Error::make(
          Errc::kClosed, "control api",
          "cannot reach the agent at " + endpoint + " (" + why + "); is the agent running?");
    case CURLE_OPERATION_TIMEDOUT:
      return Error::make(Errc::kTimeout, "control api",
                         what + " to " + endpoint + ": no answer in time (" + why + ")");
    case CURLE_WRITE_ERROR:
      if (body_too_large)
        return Error::make(Errc::kProtocol, "control api", "response larger than 16 MiB");
      break;
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
      return Error::make(Errc::kConfig, "control api: --cacert/--cert/--key",
                         endpoint + ": " + why);
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
      if (endpoint.rfind("https://", 0) == 0) {
        return Error::make(Errc::kAuth, "control api: TLS",
                           endpoint + ": " + why +
                               "; does --cacert sign the agent's certificate, and is this "
                               "client's certificate (--cert/--key) accepted?");
      }
      break;
    default:
      break;
  }
  return Error::make(Errc::kProtocol, "control api", what + " to " + endpoint + ": " + why);
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
  auto target = parseEndpoint(endpoint_);
  if (!target) return std::unexpected(target.error());
  if (target->base_url.rfind("https://", 0) == 0 && tls_ca_.empty()) {
    return fail(
        Errc::kConfig, "control api: --cacert",
        "required for " + endpoint_ + ": the CA that signed the agent's control certificate");
  }
  initCurlOnce();
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), &curl_easy_cleanup);
  if (!curl) return fail(Errc::kSystem, "curl_easy_init", "control api");
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> headers(nullptr,
                                                                      &curl_slist_free_all);
  auto addHeader = [&headers](const std::string& h) {
    headers.reset(curl_slist_append(headers.release(), h.c_str()));
  };
  addHeader("Content-Type: application/json");
  addHeader("Expect:");  // one round trip: the agent never answers 100-continue usefully
  if (!bearer_.empty()) addHeader("Authorization: Bearer " + bearer_);

  const std::string url = target->base_url + path;
  ResponseSink response;
  char detail[CURL_ERROR_SIZE] = "";
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  // no SIGALRM for timeouts: we run in threads
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_.count()));
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (method == "POST" || !body.empty()) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  if (method == "HEAD") curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &appendBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &response);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, detail);
  if (!target->unix_path.empty())
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, target->unix_path.c_str());
  if (!tls_ca_.empty()) {
    curl_easy_setopt(c, CURLOPT_CAINFO, tls_ca_.c_str());
    curl_easy_setopt(c, CURLOPT_SSLVERSION, CURL_SSLVERSION_TLSv1_3);
  }
  if (!tls_cert_.empty()) {
    curl_easy_setopt(c, CURLOPT_SSLCERT, tls_cert_.c_str());
    curl_easy_setopt(c, CURLOPT_SSLKEY, (tls_key_.empty() ? tls_cert_ : tls_key_).c_str());
  }

  CURLcode code = curl_easy_perform(c);
  if (code == CURLE_COULDNT_CONNECT && !target->unix_path.empty()) {
    // libcurl words this as a failed TCP connect to localhost port 80; the socket file is what
    // a person has to look at.
    long os_errno = 0;
    curl_easy_getinfo(c, CURLINFO_OS_ERRNO, &os_errno);
    std::snprintf(detail, sizeof detail, "connect %s: %s", target->unix_path.c_str(),
                  std::strerror(static_cast<int>(os_errno)));
  }
  if (code != CURLE_OK) {
    return std::unexpected(
        describe(code, detail, endpoint_, method + ' ' + path, response.too_large));
  }
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  return HttpResponse{static_cast<int>(status), std::move(response.body)};
}

}  // namespace lazymig::client

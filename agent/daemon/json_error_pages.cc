#include "agent/daemon/json_error_pages.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace lazymig::agent {
namespace {

// The tail of libevent's ERR_FORMAT page (http.c); a page is always added last, in one piece.
constexpr std::string_view kPageEnd = "</BODY></HTML>\n";
constexpr std::string_view kTooLargeTitle = "<TITLE>413 ";
// The status line, headers and page together are far smaller than this.
constexpr std::size_t kPageWindow = 1024;

std::string jsonTooLarge(std::size_t max_body) {
  nlohmann::json body = {{"error",
                          {{"code", "too_large"},
                           {"message", "the request body is larger than the limit of " +
                                           std::to_string(max_body) + " bytes"}}}};
  std::string text = body.dump() + "\n";
  return "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
         "Connection: close\r\nContent-Length: " +
         std::to_string(text.size()) + "\r\n\r\n" + text;
}

void onOutput(evbuffer* out, const evbuffer_cb_info* info, void* arg) {
  // Our own rewrite below adds to this buffer again.
  static thread_local bool rewriting = false;
  const std::size_t len = evbuffer_get_length(out);
  if (rewriting || info->n_added == 0 || info->n_added > kPageWindow || len < kPageEnd.size()) {
    return;
  }
  const std::size_t from = len > kPageWindow ? len - kPageWindow : 0;
  std::string tail(len - from, '\0');
  evbuffer_ptr at;
  evbuffer_ptr_set(out, &at, from, EVBUFFER_PTR_SET);
  if (evbuffer_copyout_from(out, &at, tail.data(), tail.size()) < 0) return;
  if (!tail.ends_with(kPageEnd)) return;
  const auto title = tail.find(kTooLargeTitle);
  const auto status = tail.rfind("HTTP/1.", title);
  if (title == std::string::npos || status == std::string::npos) return;
  // Everything before the page's status line (earlier responses) stays as it was.
  const std::size_t keep = from + status;
  std::string before(keep, '\0');
  evbuffer_copyout(out, before.data(), keep);
  rewriting = true;
  evbuffer_drain(out, len);
  evbuffer_add(out, before.data(), before.size());
  const std::string json = jsonTooLarge(*static_cast<const std::size_t*>(arg));
  evbuffer_add(out, json.data(), json.size());
  rewriting = false;
}

}  // namespace

void replaceLibeventErrorPages(bufferevent* bev, const std::size_t& max_body) {
  evbuffer_add_cb(bufferevent_get_output(bev), &onOutput, const_cast<std::size_t*>(&max_body));
}

}  // namespace lazymig::agent

// libevent 2.1 answers some requests before any handler sees them -- a body over evhttp's size
// limit gets a fixed HTML "413" page (evhttp_send_error; libevent 2.2's evhttp_set_errorcb is
// not in Debian 12). The control API promises JSON errors (docs/control-api.md), so every
// connection's output is watched and such a page is replaced by the documented JSON error
// before it reaches the socket.
#pragma once

#include <cstddef>

struct bufferevent;

namespace lazymig::agent {

// Call on a connection's bufferevent before evhttp writes anything to it. `max_body` (a
// constant: it must outlive every connection) goes into the error's message.
void replaceLibeventErrorPages(bufferevent* bev, const std::size_t& max_body);

}  // namespace lazymig::agent

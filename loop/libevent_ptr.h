// Owning handles for libevent's C objects: each frees its object with the matching libevent
// call when it goes out of scope, so no owner writes `event_free` by hand.
#pragma once

#include <memory>

struct event;
struct event_base;
struct bufferevent;
struct evbuffer;
struct evhttp;
struct evconnlistener;
struct evkeyvalq;

namespace lazymig::loop {

struct LibeventFree {
  void operator()(event* e) const;
  void operator()(event_base* b) const;
  void operator()(bufferevent* b) const;
  void operator()(evbuffer* b) const;
  void operator()(evhttp* h) const;
  void operator()(evconnlistener* l) const;
  void operator()(evkeyvalq* q) const;
};

using EventPtr = std::unique_ptr<event, LibeventFree>;
using EventBasePtr = std::unique_ptr<event_base, LibeventFree>;
using BufferEventPtr = std::unique_ptr<bufferevent, LibeventFree>;
using EvBufferPtr = std::unique_ptr<evbuffer, LibeventFree>;
using EvHttpPtr = std::unique_ptr<evhttp, LibeventFree>;
using EvConnListenerPtr = std::unique_ptr<evconnlistener, LibeventFree>;
// A list of key/value pairs (a parsed query string): evhttp_clear_headers frees its entries,
// then the list itself goes.
using KeyValuesPtr = std::unique_ptr<evkeyvalq, LibeventFree>;

// An empty list, for evhttp_parse_query_str to fill.
KeyValuesPtr newKeyValues();

}  // namespace lazymig::loop

#include "loop/libevent_ptr.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

namespace lazymig::loop {

void LibeventFree::operator()(event* e) const { event_free(e); }
void LibeventFree::operator()(event_base* b) const { event_base_free(b); }
void LibeventFree::operator()(bufferevent* b) const { bufferevent_free(b); }
void LibeventFree::operator()(evbuffer* b) const { evbuffer_free(b); }
void LibeventFree::operator()(evhttp* h) const { evhttp_free(h); }
void LibeventFree::operator()(evconnlistener* l) const { evconnlistener_free(l); }

}  // namespace lazymig::loop

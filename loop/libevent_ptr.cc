#include "loop/libevent_ptr.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <sys/queue.h>

namespace lazymig::loop {

void LibeventFree::operator()(event* e) const { event_free(e); }
void LibeventFree::operator()(event_base* b) const { event_base_free(b); }
void LibeventFree::operator()(bufferevent* b) const { bufferevent_free(b); }
void LibeventFree::operator()(evbuffer* b) const { evbuffer_free(b); }
void LibeventFree::operator()(evhttp* h) const { evhttp_free(h); }
void LibeventFree::operator()(evconnlistener* l) const { evconnlistener_free(l); }
void LibeventFree::operator()(evkeyvalq* q) const {
  evhttp_clear_headers(q);
  delete q;
}

KeyValuesPtr newKeyValues() {
  KeyValuesPtr q(new evkeyvalq);
  TAILQ_INIT(q.get());
  return q;
}

}  // namespace lazymig::loop

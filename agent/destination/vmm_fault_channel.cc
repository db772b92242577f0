#include "agent/destination/vmm_fault_channel.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include <cassert>
#include <cstring>

namespace lazymig::agent {

VmmFaultChannel::VmmFaultChannel(transport::EventLoop& loop, const sys::UnixSocket& socket,
                                 Handlers handlers, log::Logger logger)
    : loop_(loop), socket_(socket), handlers_(std::move(handlers)), log_(std::move(logger)) {}

VmmFaultChannel::~VmmFaultChannel() = default;

void VmmFaultChannel::assertOnLoop() const { assert(loop_.inLoopThread()); }

Status VmmFaultChannel::start() {
  assertOnLoop();
  if (auto ok = socket_.setNonBlocking(true); !ok) return ok;
  // The UnixSocket keeps owning the descriptor: no BEV_OPT_CLOSE_ON_FREE.
  bev_.reset(bufferevent_socket_new(loop_.base(), socket_.get(), 0));
  if (!bev_) return fail(Errc::kSystem, "bufferevent_socket_new", "VMM fault socket");
  bufferevent_priority_set(bev_.get(), 0);
  bufferevent_setcb(bev_.get(), &VmmFaultChannel::onRead, nullptr, &VmmFaultChannel::onEvent, this);
  if (bufferevent_enable(bev_.get(), EV_READ | EV_WRITE) != 0) {
    return fail(Errc::kSystem, "bufferevent_enable", "VMM fault socket");
  }
  return {};
}

void VmmFaultChannel::stop() {
  assertOnLoop();
  bev_.reset();
}

void VmmFaultChannel::onRead(bufferevent* bev, void* arg) {
  auto* self = static_cast<VmmFaultChannel*>(arg);
  evbuffer* in = bufferevent_get_input(bev);
  std::size_t n = evbuffer_get_length(in);
  std::string bytes(n, '\0');
  evbuffer_remove(in, bytes.data(), n);
  self->stream_.feed(bytes);
  for (;;) {
    auto next = self->stream_.next();
    if (!next) return self->closed(next.error());
    if (!*next) return;
    auto request = vmm::parseFaultRequest(**next);
    if (!request) {
      if (self->handlers_.on_bad_request) self->handlers_.on_bad_request(request.error());
      continue;
    }
    ++self->requests_;
    self->handlers_.on_request(*request);
    if (!self->bev_) return;  // the handler stopped us
  }
}

void VmmFaultChannel::onEvent(bufferevent*, short what, void* arg) {
  auto* self = static_cast<VmmFaultChannel*>(arg);
  if (what & BEV_EVENT_EOF) {
    return self->closed(
        Error::make(Errc::kPeerGone, "VMM fault socket", "the VMM closed the socket"));
  }
  if (what & BEV_EVENT_ERROR) {
    return self->closed(Error::make(Errc::kPeerGone, "VMM fault socket",
                                    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR())));
  }
}

void VmmFaultChannel::closed(const Error& why) {
  stop();
  if (handlers_.on_closed) handlers_.on_closed(why);
}

void VmmFaultChannel::reply(const vmm::FaultReply& reply) {
  assertOnLoop();
  if (!bev_) return;
  std::string text = vmm::encodeFaultReply(reply);
  bufferevent_write(bev_.get(), text.data(), text.size());
  ++replies_;
}

}  // namespace lazymig::agent

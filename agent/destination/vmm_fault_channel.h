// The guest_memfd handshake's socket after the handshake: the VMM sends a FaultRequest when a
// vCPU exits on a page whose userfault bit is set, and waits for our FaultReply (PROTOCOLS.md
// section 2). It lives on the urgent loop beside the uffd, so that both routes of a demand
// fault share one thread, one priority and one latency metric.
//
// Messages are JSON objects back to back. A well-formed object that is not a valid
// FaultRequest is refused by name and skipped (the rest keep being served); a byte stream
// that is not JSON at all cannot be resynchronised and fails the channel.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "base/error.h"
#include "base/log.h"
#include "loop/libevent_ptr.h"
#include "sys/unix_socket.h"
#include "transport/connection.h"
#include "vmm/handshake.h"

namespace lazymig::agent {

class VmmFaultChannel {
 public:
  struct Handlers {
    std::function<void(const vmm::FaultRequest&)> on_request;
    std::function<void(const Error&)> on_bad_request;  // skipped; the channel goes on
    std::function<void(const Error&)> on_closed;       // EOF, a socket error or a broken stream
  };

  VmmFaultChannel(transport::EventLoop& loop, const sys::UnixSocket& socket, Handlers handlers,
                  log::Logger logger);
  ~VmmFaultChannel();
  VmmFaultChannel(const VmmFaultChannel&) = delete;
  VmmFaultChannel& operator=(const VmmFaultChannel&) = delete;

  // The loop's thread only (asserted), from here on; the destructor too while the loop runs.
  Status start();
  void stop();
  void reply(const vmm::FaultReply& reply);
  std::uint64_t requests() const { return requests_; }
  std::uint64_t replies() const { return replies_; }

 private:
  static void onRead(bufferevent* bev, void* arg);
  static void onEvent(bufferevent* bev, short what, void* arg);
  void closed(const Error& why);
  void assertOnLoop() const;

  transport::EventLoop& loop_;
  const sys::UnixSocket& socket_;
  Handlers handlers_;
  log::Logger log_;
  loop::BufferEventPtr bev_;
  vmm::JsonObjectStream stream_;
  std::uint64_t requests_ = 0;
  std::uint64_t replies_ = 0;
};

}  // namespace lazymig::agent

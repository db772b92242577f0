// The VMM's half of the guest_memfd variant's socket protocol (../shared/PROTOCOLS.md
// section 2), played the way Firecracker plays it for KVM userfault: a vCPU about to touch a
// page whose userfault bit is set sends a FaultRequest and waits until the bit is clear; a
// reader thread takes the handler's FaultReplies off the socket, checks them and wakes the
// waiting vCPUs.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "sys/event_fd.h"
#include "sys/unix_socket.h"
#include "testvm/guest_memory.h"
#include "testvm/userfault_bitmap.h"
#include "vmm/handshake.h"

namespace lazymig::testvm {

class FaultChannel {
 public:
  // Called with the reason when the handler breaks the protocol; must not return.
  using Fatal = std::function<void(const std::string&)>;

  // Starts the reply reader on `socket` (the handshake connection, which must outlive this).
  static Result<std::unique_ptr<FaultChannel>> start(const sys::UnixSocket& socket,
                                                     const GuestMemory& memory,
                                                     const UserfaultBitmap& bitmap, Fatal fatal);
  ~FaultChannel();
  FaultChannel(const FaultChannel&) = delete;
  FaultChannel& operator=(const FaultChannel&) = delete;

  // What KVM does before a vCPU touches 4 KiB guest page `page`: if its bit is set, exit to the
  // VMM, which sends a FaultRequest, and resume only once the bit is clear.
  void beforeAccess(unsigned vcpu, std::uint64_t page);
  // Stops and joins the reader; the socket stays open (its owner closes it).
  void stop();

  std::uint64_t requests() const { return requests_.load(std::memory_order_relaxed); }
  std::uint64_t replies() const { return replies_.load(std::memory_order_relaxed); }

 private:
  FaultChannel(const sys::UnixSocket& socket, const GuestMemory& memory,
               const UserfaultBitmap& bitmap, Fatal fatal, sys::EventFd stop)
      : socket_(socket),
        memory_(memory),
        bitmap_(bitmap),
        fatal_(std::move(fatal)),
        stop_(std::move(stop)),
        requested_(memory.pageCount(), false) {}
  void readLoop();
  // Checks one reply against the requests sent; an error is a protocol violation.
  Status accept(const vmm::FaultReply& reply);
  [[noreturn]] void protocolError(const std::string& why);
  void note(std::once_flag& once, const std::string& line);

  const sys::UnixSocket& socket_;
  const GuestMemory& memory_;
  const UserfaultBitmap& bitmap_;
  Fatal fatal_;
  sys::EventFd stop_;
  std::thread reader_;

  std::mutex write_mu_;  // one FaultRequest on the socket at a time
  std::mutex mu_;        // guards requested_; cv_ waits on it
  std::condition_variable cv_;
  std::vector<bool> requested_;  // per 4 KiB page: a FaultRequest was sent for it
  std::atomic<std::uint64_t> requests_{0};
  std::atomic<std::uint64_t> replies_{0};
  std::once_flag send_failed_, closed_;
};

}  // namespace lazymig::testvm

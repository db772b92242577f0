#include "testvm/fault_channel.h"

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace lazymig::testvm {

Result<std::unique_ptr<FaultChannel>> FaultChannel::start(const sys::UnixSocket& socket,
                                                          const GuestMemory& memory,
                                                          const UserfaultBitmap& bitmap,
                                                          Fatal fatal) {
  auto stop = sys::EventFd::create();
  if (!stop) return std::unexpected(stop.error());
  std::unique_ptr<FaultChannel> c(
      new FaultChannel(socket, memory, bitmap, std::move(fatal), std::move(*stop)));
  c->reader_ = std::thread([raw = c.get()] { raw->readLoop(); });
  return c;
}

FaultChannel::~FaultChannel() { stop(); }

void FaultChannel::stop() {
  if (!reader_.joinable()) return;
  stop_.signal();
  reader_.join();
}

void FaultChannel::protocolError(const std::string& why) {
  fatal_(why);
  std::abort();  // fatal_ must not return
}

void FaultChannel::note(std::once_flag& once, const std::string& line) {
  std::call_once(once, [&] { std::fprintf(stderr, "lazymig-testvm: %s\n", line.c_str()); });
}

void FaultChannel::beforeAccess(unsigned vcpu, std::uint64_t page) {
  if (!bitmap_.isSet(page)) return;
  // The vCPU exits; the VMM asks the handler for the page. Every vCPU that finds the bit set
  // asks on its own, as each would exit from KVM on its own.
  {
    std::lock_guard lock(mu_);
    requested_[page] = true;  // before sending: the reply may come back at once
  }
  vmm::FaultRequest request{
      .vcpu = vcpu, .offset = page * 4096, .flags = 0, .gpa = memory_.gpaOf(page)};
  {
    std::lock_guard lock(write_mu_);
    if (auto ok = socket_.sendAll(vmm::encodeFaultRequest(request)); !ok) {
      // A dead handler freezes the guest in Firecracker too; the migration watcher ends the
      // run if it never recovers.
      note(send_failed_, "FaultRequest not sent (" + ok.error().message() +
                             "): vCPUs wait on the userfault bitmap alone");
    } else {
      requests_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  // Resume only once the handler has populated the page and cleared its bit. The timed wait
  // is a backstop: the bit may be cleared by a uffd fault or the bulk stream with no reply.
  std::unique_lock lock(mu_);
  while (bitmap_.isSet(page)) cv_.wait_for(lock, std::chrono::milliseconds(1));
}

Status FaultChannel::accept(const vmm::FaultReply& r) {
  const std::uint64_t pages = memory_.pageCount();
  auto bad = [&](const std::string& why) {
    return fail(
        Errc::kProtocol, "FaultReply",
        "offset " + std::to_string(r.offset) + " len " + std::to_string(r.len) + ": " + why);
  };
  if (r.len == 0) return bad("covers no bytes");
  if (r.offset + r.len < r.offset) return bad("offset + len overflows");
  // The pages the reply covers whole.
  const std::uint64_t lo = r.offset / 4096 + (r.offset % 4096 != 0);
  const std::uint64_t hi = std::min(pages, (r.offset + r.len) / 4096);
  std::lock_guard lock(mu_);
  if (r.gpa) {
    // The handler copies the request's gpa: it must name a requested page inside the range.
    if (*r.gpa < kGuestMemfdGpaBase || (*r.gpa - kGuestMemfdGpaBase) / 4096 >= pages) {
      return bad("gpa " + std::to_string(*r.gpa) + " is outside guest memory");
    }
    std::uint64_t p = (*r.gpa - kGuestMemfdGpaBase) / 4096;
    if (!requested_[p]) return bad("gpa " + std::to_string(*r.gpa) + " was never requested");
    if (p < lo || p >= hi) {
      return bad("does not cover the page of gpa " + std::to_string(*r.gpa));
    }
    return {};
  }
  for (std::uint64_t p = lo; p < hi; ++p) {
    if (requested_[p]) return {};
  }
  return bad("covers no page a FaultRequest asked for");
}

void FaultChannel::readLoop() {
  vmm::JsonObjectStream stream;
  for (;;) {
    pollfd fds[2] = {{socket_.get(), POLLIN, 0}, {stop_.pollFd(), POLLIN, 0}};
    int n = ::poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      protocolError(Error::sys("poll", "handshake socket").message());
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;
    auto bytes = socket_.receiveSome(64 * 1024);
    if (!bytes || bytes->empty()) {
      // Firecracker never closes its end; a handler that closes its own is gone. The vCPUs go
      // on waiting on the bitmap, and the migration watcher decides how the run ends.
      note(closed_, "the handler closed the handshake socket" +
                        (bytes ? std::string() : " (" + bytes.error().message() + ")") +
                        "; no more FaultReplies");
      return;
    }
    stream.feed(*bytes);
    for (;;) {
      auto text = stream.next();
      if (!text) protocolError(text.error().message());
      if (!*text) break;
      auto reply = vmm::parseFaultReply(**text);
      if (!reply) protocolError(reply.error().message() + ": " + **text);
      if (auto ok = accept(*reply); !ok) protocolError(ok.error().message() + ": " + **text);
      replies_.fetch_add(1, std::memory_order_relaxed);
      cv_.notify_all();
    }
  }
}

}  // namespace lazymig::testvm

#include "sys/truncation_guard.h"

#include <setjmp.h>
#include <signal.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>

namespace lazymig::sys {
namespace {

struct GuardFrame {
  sigjmp_buf jump;
  std::uintptr_t begin[2];
  std::uintptr_t end[2];
};

// initial-exec: the handler reads it, and a TLS access that may allocate is not
// async-signal-safe. volatile: nothing but the handler reads it between the store and the
// reset, so a compiler may drop the store as dead (GCC did under TSan, whose instrumentation
// turns the signal fence into a plain call).
__attribute__((tls_model("initial-exec"))) thread_local GuardFrame* volatile t_frame = nullptr;

bool guards(const GuardFrame& f, std::uintptr_t address) {
  for (int i = 0; i < 2; ++i) {
    if (address >= f.begin[i] && address < f.end[i]) return true;
  }
  return false;
}

void onSigbus(int sig, siginfo_t* info, void*) {
  GuardFrame* f = t_frame;
  if (f != nullptr && guards(*f, reinterpret_cast<std::uintptr_t>(info->si_addr))) {
    siglongjmp(f->jump, 1);
  }
  // Not ours: the default action, on the same access when this handler returns.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(sig, &dfl, nullptr);
}

void installOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = onSigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, nullptr);
  });
}

GuardFrame frameFor(const void* a, std::size_t an, const void* b, std::size_t bn) {
  GuardFrame f;
  f.begin[0] = reinterpret_cast<std::uintptr_t>(a);
  f.end[0] = f.begin[0] + an;
  f.begin[1] = reinterpret_cast<std::uintptr_t>(b);
  f.end[1] = f.begin[1] + bn;
  return f;
}

Error gone(const char* what, const void* at, std::size_t n) {
  return Error::make(Errc::kClosed, "guest memory access",
                     std::string(what) + ": the pages at " +
                         std::to_string(reinterpret_cast<std::uintptr_t>(at)) + " (+" +
                         std::to_string(n) +
                         " bytes) are gone: the file behind them was truncated (SIGBUS)");
}

// The stores to t_frame must be where the program puts them relative to the guarded accesses:
// a signal fence keeps the compiler from moving them across (the handler runs on this thread).
void enter(GuardFrame* f) {
  t_frame = f;
  std::atomic_signal_fence(std::memory_order_seq_cst);
}
void leave() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_frame = nullptr;
}

}  // namespace

Status guardedCopy(void* dst, const void* src, std::size_t n, const char* what) {
  installOnce();
  GuardFrame f = frameFor(dst, n, src, n);
  if (sigsetjmp(f.jump, 1) != 0) {
    leave();
    return std::unexpected(gone(what, src, n));
  }
  enter(&f);
  std::memcpy(dst, src, n);
  leave();
  return {};
}

Status guardedZero(void* dst, std::size_t n, const char* what) {
  installOnce();
  GuardFrame f = frameFor(dst, n, dst, n);
  if (sigsetjmp(f.jump, 1) != 0) {
    leave();
    return std::unexpected(gone(what, dst, n));
  }
  enter(&f);
  std::memset(dst, 0, n);
  leave();
  return {};
}

Result<bool> guardedIsZero(const void* src, std::size_t n, const char* what) {
  installOnce();
  GuardFrame f = frameFor(src, n, src, n);
  if (sigsetjmp(f.jump, 1) != 0) {
    leave();
    return std::unexpected(gone(what, src, n));
  }
  enter(&f);
  const auto* p = static_cast<const unsigned char*>(src);
  bool zero = true;
  for (std::size_t i = 0; i + sizeof(std::uint64_t) <= n && zero; i += sizeof(std::uint64_t)) {
    std::uint64_t word;
    std::memcpy(&word, p + i, sizeof word);
    zero = word == 0;
  }
  for (std::size_t i = n & ~(sizeof(std::uint64_t) - 1); i < n && zero; ++i) zero = p[i] == 0;
  leave();
  return zero;
}

}  // namespace lazymig::sys

#include "sys/truncation_guard.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

namespace lazymig::sys {
namespace {

struct GuardFrame {
  sigjmp_buf jump;
  const void* volatile fault_address = nullptr;  // set by the handler before it jumps
  std::uintptr_t begin[2];
  std::uintptr_t end[2];
};

// initial-exec: the handler reads it, and a TLS access that may allocate is not
// async-signal-safe. volatile: nothing but the handler reads it between the store and the
// reset, so a compiler may drop the store as dead (GCC did under TSan, whose instrumentation
// turns the signal fence into a plain call).
__attribute__((tls_model("initial-exec"))) thread_local GuardFrame* volatile t_frame = nullptr;

// The thread's signal mask, read once on its first guarded call. The guard's sigsetjmp saves no
// mask (that is a system call per copy, 12% of a 4 KiB memcpy here); the rare jump out of the
// handler puts this one back instead, since the kernel (or a sanitizer's wrapper) blocked
// signals for the handler. Threads here set their mask before they touch guest memory.
thread_local sigset_t t_mask;
thread_local bool t_mask_read = false;

void rememberMask() {
  if (t_mask_read) return;
  pthread_sigmask(SIG_BLOCK, nullptr, &t_mask);
  t_mask_read = true;
}

void restoreMask() { pthread_sigmask(SIG_SETMASK, &t_mask, nullptr); }

bool guards(const GuardFrame& f, std::uintptr_t address) {
  for (int i = 0; i < 2; ++i) {
    if (address >= f.begin[i] && address < f.end[i]) return true;
  }
  return false;
}

void onSigbus(int sig, siginfo_t* info, void*) {
  GuardFrame* f = t_frame;
  if (f != nullptr && guards(*f, reinterpret_cast<std::uintptr_t>(info->si_addr))) {
    f->fault_address = info->si_addr;
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
  char address[32];
  std::snprintf(address, sizeof address, "%p", at);
  return Error::make(Errc::kClosed, "guest memory access",
                     std::string(what) + ": the page at " + address + " (in an access of " +
                         std::to_string(n) +
                         " bytes) is gone: the file behind it was truncated (SIGBUS)");
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

// After the handler jumped back: the thread is outside any guard, with its own mask again.
void jumpedBack() {
  leave();
  restoreMask();
}

// TSan runs each atomic under a runtime lock for its address; a jump out of the handler while
// one faults leaves that lock held, and the process deadlocks later (seen:
// TruncationGuard.BitmapWords... then a later test hung). Under TSan the guard only touches the
// word with a plain read and the atomic runs after it; a truncation between the two is a
// SIGBUS that only a TSan build can meet.
#if defined(__SANITIZE_THREAD__)
constexpr bool kAtomicsTakeRuntimeLocks = true;
#else
constexpr bool kAtomicsTakeRuntimeLocks = false;
#endif

// atomic_ref wants a mutable object; a load writes nothing.
std::atomic_ref<std::uint64_t> atomicWord(const std::uint64_t* word) {
  return std::atomic_ref<std::uint64_t>(*const_cast<std::uint64_t*>(word));
}

// Runs `body` (plain copies and scans: nothing to unwind) with a SIGBUS on [a, a+an) or
// [b, b+bn) turned into an error naming `what`. The handler jumps into this frame, which is live
// for as long as `body` runs.
template <class Body>
Status guarded(const void* a, std::size_t an, const void* b, std::size_t bn, const char* what,
               Body&& body) {
  installOnce();
  rememberMask();
  GuardFrame f = frameFor(a, an, b, bn);
  if (sigsetjmp(f.jump, 0) != 0) {
    jumpedBack();
    return std::unexpected(gone(what, f.fault_address, an));
  }
  enter(&f);
  body();
  leave();
  return {};
}

}  // namespace

Status guardedCopy(void* dst, const void* src, std::size_t n, const char* what) {
  return guarded(dst, n, src, n, what, [&] { std::memcpy(dst, src, n); });
}

Status guardedZero(void* dst, std::size_t n, const char* what) {
  return guarded(dst, n, dst, n, what, [&] { std::memset(dst, 0, n); });
}

Result<bool> guardedIsZero(const void* src, std::size_t n, const char* what) {
  bool zero = true;
  auto ok = guarded(src, n, src, n, what, [&] {
    const auto* p = static_cast<const unsigned char*>(src);
    for (std::size_t i = 0; i + sizeof(std::uint64_t) <= n && zero; i += sizeof(std::uint64_t)) {
      std::uint64_t word;
      std::memcpy(&word, p + i, sizeof word);
      zero = word == 0;
    }
    for (std::size_t i = n & ~(sizeof(std::uint64_t) - 1); i < n && zero; ++i) zero = p[i] == 0;
  });
  if (!ok) return std::unexpected(ok.error());
  return zero;
}

Result<std::uint64_t> guardedLoad(const std::uint64_t* word, const char* what) {
  std::uint64_t v = 0;
  auto ok = guarded(word, sizeof *word, word, sizeof *word, what, [&] {
    v = kAtomicsTakeRuntimeLocks ? *static_cast<const volatile std::uint64_t*>(word)
                                 : atomicWord(word).load(std::memory_order_acquire);
  });
  if (!ok) return std::unexpected(ok.error());
  if (kAtomicsTakeRuntimeLocks) v = atomicWord(word).load(std::memory_order_acquire);
  return v;
}

Status guardedClearBits(std::uint64_t* word, std::uint64_t bits, const char* what) {
  auto ok = guarded(word, sizeof *word, word, sizeof *word, what, [&] {
    if (kAtomicsTakeRuntimeLocks) {
      (void)*static_cast<const volatile std::uint64_t*>(word);
    } else {
      atomicWord(word).fetch_and(~bits, std::memory_order_release);
    }
  });
  if (ok && kAtomicsTakeRuntimeLocks) atomicWord(word).fetch_and(~bits, std::memory_order_release);
  return ok;
}

}  // namespace lazymig::sys

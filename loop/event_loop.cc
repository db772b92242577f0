#include "loop/event_loop.h"

#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <atomic>
#include <cassert>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "loop/libevent_ptr.h"

namespace lazymig::loop {

namespace {
std::once_flag g_threads_once;
std::mutex g_finalizers_mu;
std::vector<EventLoop::BaseFinalizer> g_finalizers;
}  // namespace

// The thread's CPU clock is valid only while the thread lives (its id may be reused after),
// so the thread records its total under mu before it ends and readers take the lock.
// SIGPIPE blocked on this thread for the scope, and one it raised meanwhile taken away before
// the old mask comes back. finish() runs on whichever thread stopped the loop, and what it
// frees writes: a TLS connection's close_notify, a queued callback's flush. To a peer that has
// gone, write(2) raises SIGPIPE, which would end a program that does not ignore it (the agent
// does; a test binary or another embedder need not), where the loop thread keeps it blocked.
class SigpipeHeldBack {
 public:
  SigpipeHeldBack() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
  }
  ~SigpipeHeldBack() {
    if (!was_pending_) {
      timespec now{};
      while (sigtimedwait(&pipe_, nullptr, &now) == SIGPIPE) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeHeldBack(const SigpipeHeldBack&) = delete;
  SigpipeHeldBack& operator=(const SigpipeHeldBack&) = delete;

 private:
  sigset_t pipe_;
  sigset_t old_;
  bool was_pending_ = false;
};

struct ThreadCpu {
  mutable std::mutex mu;
  clockid_t clock{};
  bool live = false;
  std::chrono::nanoseconds total{};

  std::chrono::nanoseconds read() const {
    std::lock_guard lock(mu);
    if (!live) return total;
    timespec ts{};
    if (clock_gettime(clock, &ts) != 0) return total;
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
  }
  // On the thread itself: first and last thing it does.
  void begin() {
    std::lock_guard lock(mu);
    live = pthread_getcpuclockid(pthread_self(), &clock) == 0;
  }
  void end() {
    std::chrono::nanoseconds last = read();
    std::lock_guard lock(mu);
    total = last;
    live = false;
  }
};

struct EventLoop::Impl {
  EventBasePtr base;
  EventPtr wake;
  std::thread thread;
  std::atomic<std::thread::id> tid{};
  // Guards queue and stopped, and is held across event_active() so that finish() cannot free
  // the wake event while another thread is activating it.
  std::mutex mu;
  std::deque<std::function<void()>> queue;
  bool stopped = false;
  // Set by stop() on the loop's own thread: the thread frees the state after its last callback.
  // Written and read only on the loop thread.
  bool finish_on_loop_thread = false;
  std::shared_ptr<ThreadCpu> cpu = std::make_shared<ThreadCpu>();
  std::atomic<std::uint64_t> next_timer{1};
  struct TimerEntry {
    Impl* impl;
    std::uint64_t id;
    EventPtr ev;
    std::function<void()> fn;
  };
  std::map<std::uint64_t, std::unique_ptr<TimerEntry>> timers;  // loop thread only

  bool inLoopThread() const { return std::this_thread::get_id() == tid.load(); }

  bool post(std::function<void()> fn) {
    std::lock_guard lock(mu);
    if (stopped) return false;
    queue.push_back(std::move(fn));
    event_active(wake.get(), EV_READ, 0);
    return true;
  }

  void arm(std::uint64_t id, std::chrono::milliseconds delay, std::function<void()> fn) {
    {
      std::lock_guard lock(mu);
      if (stopped) return;  // an arm posted before the stop and run by finish(): never fires
    }
    auto t = std::make_unique<TimerEntry>(TimerEntry{this, id, nullptr, std::move(fn)});
    t->ev.reset(event_new(base.get(), -1, 0, &Impl::onTimer, t.get()));
    timeval tv{static_cast<time_t>(delay.count() / 1000),
               static_cast<suseconds_t>((delay.count() % 1000) * 1000)};
    event_add(t->ev.get(), &tv);
    timers.emplace(id, std::move(t));
  }

  void cancel(std::uint64_t id) { timers.erase(id); }

  // Frees everything the loop owns; its thread has finished running callbacks.
  void finish() {
    SigpipeHeldBack no_sigpipe;
    std::deque<std::function<void()>> left;
    {
      std::lock_guard lock(mu);
      left.swap(queue);
    }
    for (auto& fn : left) fn();
    timers.clear();
    std::vector<BaseFinalizer> finalizers;
    {
      std::lock_guard lock(g_finalizers_mu);
      finalizers = g_finalizers;
    }
    wake.reset();
    for (auto fn : finalizers) fn(base.get());
    runQueuedCallbacks();
    base.reset();
  }

  // A bufferevent holds a reference to itself while one of its deferred callbacks is queued
  // (an OpenSSL bufferevent defers its write callback after every write) and drops it when
  // that callback runs. The break leaves the callbacks queued in the loop's last turn unrun,
  // and event_base_free cancels them without dropping those references: a bufferevent its
  // owner or a finalizer freed meanwhile would never be freed, SSL session and all. So they
  // run here, in non-blocking turns. Nothing has an event on the base any more (its owners
  // are gone, the finalizers freed the rest), so there is no I/O to poll, and a freed
  // bufferevent has no callbacks of its owner's left to call.
  void runQueuedCallbacks() {
    if (event_base_get_num_events(base.get(), EVENT_BASE_COUNT_ACTIVE) > 0) {
      event_base_loop(base.get(), EVLOOP_NONBLOCK);
    }
  }

  static void onWake(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    std::deque<std::function<void()>> work;
    bool stopping = false;
    {
      std::lock_guard lock(self->mu);
      work.swap(self->queue);
      stopping = self->stopped;
    }
    for (auto& fn : work) fn();
    // The break is requested from inside the loop: event_base_loop clears a break flag set
    // before it starts, so a loop stopped right after start() would otherwise run on.
    if (stopping) event_base_loopbreak(self->base.get());
  }

  static void onTimer(evutil_socket_t, short, void* arg) {
    auto* t = static_cast<TimerEntry*>(arg);
    Impl* impl = t->impl;
    auto it = impl->timers.find(t->id);
    if (it == impl->timers.end()) return;
    auto owned = std::move(it->second);
    impl->timers.erase(it);
    owned->fn();
  }
};

Result<std::unique_ptr<EventLoop>> EventLoop::start(const std::string& name, int priorities) {
  // libevent must know about threads before any base exists, or event_active() from another
  // thread would not wake the loop.
  std::call_once(g_threads_once, [] { evthread_use_pthreads(); });
  auto impl = std::make_shared<Impl>();
  impl->base.reset(event_base_new());
  if (!impl->base) return fail(Errc::kSystem, "event_base_new", name);
  if (priorities > 1 && event_base_priority_init(impl->base.get(), priorities) != 0) {
    return fail(Errc::kSystem, "event_base_priority_init", name);
  }
  impl->wake.reset(event_new(impl->base.get(), -1, 0, &Impl::onWake, impl.get()));
  if (priorities > 1) event_priority_set(impl->wake.get(), 0);
  std::promise<void> started;
  auto fut = started.get_future();
  // The thread holds the state alive: a loop stopped from one of its own callbacks may have
  // its EventLoop destroyed before that callback returns to event_base_loop.
  impl->thread = std::thread([self = impl, name, &started] {
    self->tid = std::this_thread::get_id();
    // OpenSSL writes to sockets with write(2), which raises SIGPIPE when the peer has gone.
    // Blocked here, it stays pending on this thread and the write fails with EPIPE instead
    // of killing the process, whatever the embedding program does with the signal.
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
    self->cpu->begin();
    started.set_value();
    event_base_loop(self->base.get(), EVLOOP_NO_EXIT_ON_EMPTY);
    if (self->finish_on_loop_thread) self->finish();
    self->cpu->end();
  });
  fut.wait();
  return std::unique_ptr<EventLoop>(new EventLoop(std::move(impl)));
}

EventLoop::EventLoop(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

EventLoop::~EventLoop() { stop(); }

bool EventLoop::post(std::function<void()> fn) { return impl_->post(std::move(fn)); }

Timer EventLoop::schedule(std::chrono::milliseconds delay, std::function<void()> fn) {
  std::uint64_t id = impl_->next_timer.fetch_add(1);
  if (inLoopThread()) {
    impl_->arm(id, delay, std::move(fn));
  } else {
    impl_->post([impl = impl_.get(), id, delay, fn = std::move(fn)]() mutable {
      impl->arm(id, delay, std::move(fn));
    });
  }
  return Timer(impl_, id);
}

void EventLoop::scheduleDetached(std::chrono::milliseconds delay, std::function<void()> fn) {
  Timer t = schedule(delay, std::move(fn));
  t.id_ = 0;  // nobody cancels it
}

bool EventLoop::inLoopThread() const { return impl_->inLoopThread(); }

event_base* EventLoop::base() const { return impl_->base.get(); }

LoopPoster EventLoop::poster() const { return LoopPoster(impl_); }

bool LoopPoster::post(std::function<void()> fn) const {
  auto impl = loop_.lock();
  return impl && impl->post(std::move(fn));
}

CpuClock EventLoop::cpuClock() const { return CpuClock(impl_->cpu); }

std::chrono::nanoseconds CpuClock::read() const {
  return thread_ ? thread_->read() : std::chrono::nanoseconds{};
}

void EventLoop::stop() {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
    event_active(impl_->wake.get(), EV_READ, 0);  // onWake runs what is queued, then breaks
  }
  if (inLoopThread()) {
    // Freeing the base here would pull it from under the callback that called us; the thread
    // finishes once that callback returns and event_base_loop sees the break.
    impl_->finish_on_loop_thread = true;
    impl_->thread.detach();
    return;
  }
  impl_->thread.join();
  impl_->finish();
}

void EventLoop::addBaseFinalizer(BaseFinalizer fn) {
  std::lock_guard lock(g_finalizers_mu);
  for (auto f : g_finalizers)
    if (f == fn) return;
  g_finalizers.push_back(fn);
}

Timer::Timer(Timer&& other) noexcept
    : loop_(std::move(other.loop_)), id_(std::exchange(other.id_, 0)) {}

Timer& Timer::operator=(Timer&& other) noexcept {
  if (this != &other) {
    cancel();
    loop_ = std::move(other.loop_);
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

Timer::~Timer() { cancel(); }

void Timer::cancel() {
  std::uint64_t id = std::exchange(id_, 0);
  auto impl = loop_.lock();
  if (id == 0 || !impl) return;
  if (impl->inLoopThread()) {
    impl->cancel(id);
  } else {
    impl->post([weak = loop_, id] {
      if (auto live = weak.lock()) live->cancel(id);
    });
  }
}

bool Timer::pending() const {
  auto impl = loop_.lock();
  assert(!impl || impl->inLoopThread());
  return id_ != 0 && impl && impl->timers.contains(id_);
}

}  // namespace lazymig::loop

#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>
#include <signal.h>

#include <future>

#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "transport/connection.h"
#include "transport/connection_impl.h"

namespace lazymig::transport {

struct EventLoop::Impl {
  event_base* base = nullptr;
  event* wake = nullptr;
  std::thread thread;
  std::atomic<std::thread::id> tid{};
  std::mutex mu;
  std::deque<std::function<void()>> queue;
  std::atomic<std::uint64_t> next_timer{1};
  struct Timer {
    Impl* impl;
    std::uint64_t id;
    event* ev;
    std::function<void()> fn;
  };
  std::map<std::uint64_t, std::unique_ptr<Timer>> timers;  // loop thread only
  std::atomic<bool> stopped{false};

  static void onWake(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    std::deque<std::function<void()>> work;
    {
      std::lock_guard lock(self->mu);
      work.swap(self->queue);
    }
    for (auto& fn : work) fn();
  }

  static void onTimer(evutil_socket_t, short, void* arg) {
    auto* t = static_cast<Timer*>(arg);
    Impl* impl = t->impl;
    auto it = impl->timers.find(t->id);
    if (it == impl->timers.end()) return;
    auto owned = std::move(it->second);
    impl->timers.erase(it);
    event_free(owned->ev);
    owned->fn();
  }
};

namespace {
std::once_flag g_threads_once;
}

Result<std::unique_ptr<EventLoop>> EventLoop::start(const std::string& name, int priorities) {
  // libevent must know about threads before any base exists, or event_active() from another
  // thread would not wake the loop.
  std::call_once(g_threads_once, [] { evthread_use_pthreads(); });
  auto impl = std::make_unique<Impl>();
  impl->base = event_base_new();
  if (impl->base == nullptr) return fail(Errc::kSystem, "event_base_new", name);
  if (priorities > 1 && event_base_priority_init(impl->base, priorities) != 0) {
    event_base_free(impl->base);
    return fail(Errc::kSystem, "event_base_priority_init", name);
  }
  impl->wake = event_new(impl->base, -1, 0, &Impl::onWake, impl.get());
  if (priorities > 1) event_priority_set(impl->wake, 0);
  std::unique_ptr<EventLoop> loop(new EventLoop(std::move(impl)));
  Impl* raw = loop->impl_.get();
  std::promise<void> started;
  auto fut = started.get_future();
  raw->thread = std::thread([raw, name, &started] {
    raw->tid = std::this_thread::get_id();
    // OpenSSL writes to sockets with write(2), which raises SIGPIPE when the peer has gone.
    // Blocked here, it stays pending on this thread and the write fails with EPIPE instead
    // of killing the process, whatever the embedding program does with the signal.
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
    started.set_value();
    event_base_loop(raw->base, EVLOOP_NO_EXIT_ON_EMPTY);
  });
  fut.wait();
  return loop;
}

EventLoop::EventLoop(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

EventLoop::~EventLoop() { stop(); }

bool EventLoop::post(std::function<void()> fn) {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stopped) return false;
    impl_->queue.push_back(std::move(fn));
  }
  event_active(impl_->wake, EV_READ, 0);
  return true;
}

std::uint64_t EventLoop::postDelayed(std::chrono::milliseconds delay, std::function<void()> fn) {
  std::uint64_t id = impl_->next_timer.fetch_add(1);
  auto arm = [impl = impl_.get(), id, delay, fn = std::move(fn)]() mutable {
    auto t = std::make_unique<Impl::Timer>(Impl::Timer{impl, id, nullptr, std::move(fn)});
    t->ev = event_new(impl->base, -1, 0, &Impl::onTimer, t.get());
    timeval tv{static_cast<time_t>(delay.count() / 1000),
               static_cast<suseconds_t>((delay.count() % 1000) * 1000)};
    event_add(t->ev, &tv);
    impl->timers.emplace(id, std::move(t));
  };
  if (inLoopThread())
    arm();
  else
    post(std::move(arm));
  return id;
}

void EventLoop::cancelTimer(std::uint64_t id) {
  auto it = impl_->timers.find(id);
  if (it == impl_->timers.end()) return;
  event_free(it->second->ev);
  impl_->timers.erase(it);
}

bool EventLoop::inLoopThread() const { return std::this_thread::get_id() == impl_->tid.load(); }

event_base* EventLoop::base() const { return impl_->base; }

void EventLoop::stop() {
  if (!impl_) return;
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stopped.exchange(true)) return;
  }
  event_base_loopbreak(impl_->base);
  if (impl_->thread.joinable()) {
    if (inLoopThread())
      impl_->thread.detach();
    else
      impl_->thread.join();
  }
  for (auto& [id, t] : impl_->timers) event_free(t->ev);
  impl_->timers.clear();
  // Work posted before the stop but not yet run: run it here (the loop thread is gone), so a
  // caller waiting for it -- runOnLoop() -- is never left waiting forever.
  std::deque<std::function<void()>> left;
  {
    std::lock_guard lock(impl_->mu);
    left.swap(impl_->queue);
  }
  for (auto& fn : left) fn();
  event_free(impl_->wake);
  freeLingeringConnections(impl_->base);
  event_base_free(impl_->base);
}

}  // namespace lazymig::transport

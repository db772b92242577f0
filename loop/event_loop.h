// One thread, one libevent event_base. Everything that touches the loop's events runs on its
// thread; other threads hand work over with post() or schedule(). The calls any thread may
// make are post(), schedule(), scheduleDetached(), inLoopThread(), stop() and a Timer's
// cancel or destruction (which posts the cancel); the rest is the loop thread's alone.
// State shared between threads outside a loop is listed in docs/architecture.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "base/error.h"

struct event_base;

namespace lazymig::loop {

class LoopPoster;
class Timer;
struct ThreadCpu;

// A loop thread's CPU clock (its own, not the process's): copyable, and it outlives its loop,
// standing at the thread's total once the thread has ended. Thread-safe.
class CpuClock {
 public:
  CpuClock() = default;  // reads zero
  std::chrono::nanoseconds read() const;

 private:
  friend class EventLoop;
  explicit CpuClock(std::shared_ptr<const ThreadCpu> thread) : thread_(std::move(thread)) {}
  std::shared_ptr<const ThreadCpu> thread_;
};

class EventLoop {
 public:
  // Starts the loop thread. `priorities` > 1 enables libevent priorities (0 runs first).
  static Result<std::unique_ptr<EventLoop>> start(const std::string& name, int priorities = 2);
  // Stops the loop: see stop().
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Thread-safe; runs fn on the loop thread. False (fn dropped) once the loop has stopped.
  bool post(std::function<void()> fn);
  // Runs fn on the loop thread after `delay`, unless the returned handle is destroyed or
  // cancelled first. Thread-safe; the handle may outlive the loop.
  [[nodiscard]] Timer schedule(std::chrono::milliseconds delay, std::function<void()> fn);
  // Fire-and-forget form of schedule(), for work that must run even if nobody holds it.
  void scheduleDetached(std::chrono::milliseconds delay, std::function<void()> fn);
  bool inLoopThread() const;
  // A handle that posts to this loop and may outlive it. Thread-safe.
  LoopPoster poster() const;
  event_base* base() const;
  // The CPU time the loop's thread has used, for the cost of the work it runs.
  CpuClock cpuClock() const;
  std::chrono::nanoseconds cpuTime() const { return cpuClock().read(); }
  // Idempotent. From another thread: breaks the loop and joins its thread. From the loop's own
  // thread (a callback stopping or destroying its loop): breaks the loop, and the thread frees
  // the loop's state itself once the running callback has returned. Either way, work posted
  // before the stop and not yet run is run (on the loop thread when it can, else here), so a
  // caller waiting for it is never left waiting forever. Callbacks libevent queued in the
  // loop's last turn (a bufferevent's deferred ones) run before the base is freed, so that the
  // bufferevents they hold are freed too.
  void stop();

  // Called with every event_base just before it is freed, for owners of objects that live on
  // a base beyond their owner (e.g. closed connections still flushing). Any thread.
  using BaseFinalizer = void (*)(event_base*);
  static void addBaseFinalizer(BaseFinalizer fn);

  struct Impl;

 private:
  explicit EventLoop(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Posts to an EventLoop from any thread, and may outlive it: post() is false (fn dropped, here)
// once the loop has stopped or is gone. For work handed to a loop by something whose lifetime
// the loop's owner does not control (a libevent finalizer on another loop).
class LoopPoster {
 public:
  LoopPoster() = default;  // posts nowhere
  bool post(std::function<void()> fn) const;

 private:
  friend class EventLoop;
  explicit LoopPoster(std::weak_ptr<EventLoop::Impl> loop) : loop_(std::move(loop)) {}
  std::weak_ptr<EventLoop::Impl> loop_;
};

// An armed timer of an EventLoop: move-only; destroying it or calling cancel() cancels the
// timer if it has not fired. Owners keep one as a member instead of an id they must zero.
class Timer {
 public:
  Timer() = default;
  Timer(Timer&& other) noexcept;
  Timer& operator=(Timer&& other) noexcept;
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  ~Timer();
  void cancel();
  // True from schedule() until it fires or is cancelled. Loop thread only: the timers it
  // looks in are that thread's alone.
  bool pending() const;

 private:
  friend class EventLoop;
  Timer(std::weak_ptr<EventLoop::Impl> loop, std::uint64_t id) : loop_(std::move(loop)), id_(id) {}
  std::weak_ptr<EventLoop::Impl> loop_;
  std::uint64_t id_ = 0;
};

}  // namespace lazymig::loop

// Running a function on a loop's thread and waiting for it: for set-up and tear-down only,
// never on a hot path.
#pragma once

#include <functional>
#include <future>

#include "transport/connection.h"

namespace lazymig::agent {

inline void runOnLoop(transport::EventLoop& loop, const std::function<void()>& fn) {
  if (loop.inLoopThread()) {
    fn();
    return;
  }
  std::promise<void> done;
  auto fut = done.get_future();
  bool posted = loop.post([&] {
    fn();
    done.set_value();
  });
  // A stopped loop's thread has been joined: nothing else can run on it, so run fn here.
  if (!posted) return fn();
  fut.wait();
}

}  // namespace lazymig::agent

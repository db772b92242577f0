// Marks a method that must run on its loop's thread -- it touches the loop's libevent objects,
// or state that nothing but that thread's ordering guards -- and checks it in debug builds
// (the asan preset is one), the way Envoy asserts isThreadSafe() on its dispatcher.
// `loop` is any object with inLoopThread() (an EventLoop).
#pragma once

#include <cassert>

#define LAZYMIG_ASSERT_ON_LOOP(loop) \
  assert((loop).inLoopThread() && "a loop-only method was called off its loop's thread")

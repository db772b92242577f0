// Writes the latest state of something to durable storage from several threads, so that the
// last write to land always carries the newest state. Building a record under a lock and
// writing it after the lock is released lets an older record land last (issue 13: a
// `completing` record written after `failed` made a restarted agent resume a failed migration).
#pragma once

#include <mutex>

namespace lazymig {

class LatestStateWriter {
 public:
  // Calls `write` now, unless another thread is writing: then that thread writes once more
  // when its write returns, and this call returns at once. `write` must read the state when
  // it runs (never capture it before), so the rerun writes what this caller wanted and newer.
  // Writes never overlap. Returns true when this call wrote (and so knows the outcome).
  template <class Write>
  bool write(Write&& write) {
    {
      std::lock_guard lock(mu_);
      again_ = true;
      if (writing_) return false;
      writing_ = true;
    }
    for (;;) {
      {
        std::lock_guard lock(mu_);
        if (!again_) {
          writing_ = false;
          return true;
        }
        again_ = false;
      }
      write();
    }
  }

 private:
  std::mutex mu_;
  bool writing_ = false;  // a thread is inside write()
  bool again_ = false;    // state changed since the running write read it
};

}  // namespace lazymig

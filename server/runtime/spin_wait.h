// SpinWait: polls a condition, yielding the core between polls, for at most a bounded
// time: cheaper than sleeping when what is awaited is microseconds away.
#ifndef PQKV_SERVER_RUNTIME_SPIN_WAIT_H_
#define PQKV_SERVER_RUNTIME_SPIN_WAIT_H_

#include <chrono>
#include <thread>

#include "absl/time/time.h"

namespace pqkv::server {

// True as soon as done() is; false if it still is not after `bound`.
template <typename Done>
bool SpinWait(absl::Duration bound, Done done) {
  if (done()) return true;
  if (bound <= absl::ZeroDuration()) return false;
  const auto until = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(bound);
  while (std::chrono::steady_clock::now() < until) {
    std::this_thread::yield();
    if (done()) return true;
  }
  return false;
}

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RUNTIME_SPIN_WAIT_H_

// ThreadPool: a fixed set of named worker threads running closures in FIFO order.
//
// A worker that runs out of tasks polls the queue for `spin` before it sleeps: waking a
// sleeping thread takes tens to hundreds of microseconds (much more where its vCPU
// halted), as long as a layer's row gather takes to hand half its heads to a second
// thread. Polling yields the core to any other runnable thread.
//
// `nice` (Linux, per thread): a pool of background work runs at a lower priority than
// the threads that answer requests, so the scheduler hands them the cores first.
//
// Thread-safe. The destructor stops accepting work, runs what is queued, and joins.
#ifndef PQKV_SERVER_RUNTIME_THREAD_POOL_H_
#define PQKV_SERVER_RUNTIME_THREAD_POOL_H_

#include <atomic>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace pqkv::server {

class ThreadPool {
 public:
  ThreadPool(std::string name, int num_threads, absl::Duration spin = absl::ZeroDuration(),
             int nice = 0);
  ~ThreadPool();

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Schedule(absl::AnyInvocable<void() &&> task);
  // Tasks waiting or running.
  size_t pending() const;
  int num_threads() const { return static_cast<int>(threads_.size()); }
  // How long a thread polls for work (or for a ParallelFor's helpers) before sleeping.
  absl::Duration spin() const { return spin_; }

 private:
  void WorkLoop();

  // Polls `queued_` for up to spin_; false when nothing came.
  bool SpinForWork() const;

  const std::string name_;
  const absl::Duration spin_;
  const int nice_;
  mutable absl::Mutex mu_;
  // queue_.size(), readable without the lock while polling.
  std::atomic<size_t> queued_{0};
  std::deque<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mu_);
  size_t running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RUNTIME_THREAD_POOL_H_

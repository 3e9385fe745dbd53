// ThreadPool: a fixed set of named worker threads running closures in FIFO order.
//
// Thread-safe. The destructor stops accepting work, runs what is queued, and joins.
#ifndef PQKV_SERVER_THREAD_POOL_H_
#define PQKV_SERVER_THREAD_POOL_H_

#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace pqkv::server {

class ThreadPool {
 public:
  ThreadPool(std::string name, int num_threads);
  ~ThreadPool();

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Schedule(absl::AnyInvocable<void() &&> task);
  // Tasks waiting or running.
  size_t pending() const;
  int num_threads() const { return static_cast<int>(threads_.size()); }

 private:
  void WorkLoop();

  const std::string name_;
  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mu_);
  size_t running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_THREAD_POOL_H_

#include "server/runtime/thread_pool.h"

#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <utility>

#include "server/runtime/spin_wait.h"

namespace pqkv::server {

ThreadPool::ThreadPool(std::string name, int num_threads, absl::Duration spin, int nice)
    : name_(std::move(name)), spin_(spin), nice_(nice) {
  for (int i = 0; i < std::max(1, num_threads); ++i) {
    threads_.emplace_back([this] { WorkLoop(); });
    // Thread names show in top/gdb; Linux caps them at 15 characters.
    pthread_setname_np(threads_.back().native_handle(), name_.substr(0, 15).c_str());
  }
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (auto& thread : threads_) thread.join();
}

void ThreadPool::Schedule(absl::AnyInvocable<void() &&> task) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(task));
  queued_.store(queue_.size(), std::memory_order_release);
}

size_t ThreadPool::pending() const {
  absl::MutexLock lock(&mu_);
  return queue_.size() + running_;
}

void ThreadPool::WorkLoop() {
  // On Linux a thread id names one thread, so this lowers this worker alone. Raising the
  // value never needs a privilege; a failure leaves the default priority, harmlessly.
  if (nice_ != 0) setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice_);
  while (true) {
    absl::AnyInvocable<void() &&> task;
    SpinWait(spin_, [this] { return queued_.load(std::memory_order_acquire) > 0; });
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](ThreadPool* pool) ABSL_EXCLUSIVE_LOCKS_REQUIRED(pool->mu_) {
            return pool->stopping_ || !pool->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
      queued_.store(queue_.size(), std::memory_order_release);
      ++running_;
    }
    std::move(task)();
    absl::MutexLock lock(&mu_);
    --running_;
  }
}

}  // namespace pqkv::server

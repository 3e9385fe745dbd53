#include "server/runtime/parallel_for.h"

#include <atomic>
#include <memory>

#include "absl/synchronization/mutex.h"
#include "server/runtime/spin_wait.h"

namespace pqkv::server {
namespace {

struct SharedLoop {
  explicit SharedLoop(int n, const std::function<void(int)>& fn) : n(n), fn(fn) {}
  const int n;
  const std::function<void(int)>& fn;  // outlives every use: the caller waits for `done`
  std::atomic<int> next{0};
  // Indices finished. Written under mu, so that the caller may sleep on mu until it
  // reaches n; read without it while the caller polls first.
  std::atomic<int> done{0};
  absl::Mutex mu;

  // Claims and runs indices until none is left.
  void Run() {
    int ran = 0;
    for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      fn(i);
      ++ran;
    }
    if (ran > 0) {
      absl::MutexLock lock(&mu);
      done.fetch_add(ran, std::memory_order_release);
    }
  }
};

}  // namespace

void ParallelFor(ThreadPool* pool, int n, const std::function<void(int)>& fn) {
  if (n <= 0) return;
  if (pool == nullptr || n == 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  auto loop = std::make_shared<SharedLoop>(n, fn);
  const int helpers = std::min(n - 1, pool->num_threads());
  // A helper that starts after the loop is over finds no index left and touches nothing
  // but `next`, which the shared_ptr keeps alive.
  for (int h = 0; h < helpers; ++h) pool->Schedule([loop] { loop->Run(); });
  loop->Run();
  // What is left runs on helpers that already started: often microseconds from done.
  auto all_done = [](SharedLoop* l) { return l->done.load(std::memory_order_acquire) == l->n; };
  if (SpinWait(pool->spin(), [&] { return all_done(loop.get()); })) return;
  absl::MutexLock lock(&loop->mu);
  loop->mu.Await(absl::Condition(+all_done, loop.get()));
}

}  // namespace pqkv::server

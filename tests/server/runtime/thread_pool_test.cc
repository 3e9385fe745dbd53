#include "server/runtime/thread_pool.h"

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>

#include "absl/synchronization/notification.h"
#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

// The niceness of the thread that calls it (Linux: a thread id names one thread).
int ThreadNice() { return getpriority(PRIO_PROCESS, static_cast<id_t>(gettid())); }

int NiceInPool(int nice) {
  ThreadPool pool("nice-test", 2, absl::ZeroDuration(), nice);
  std::atomic<int> seen{-100};
  absl::Notification done;
  pool.Schedule([&] {
    seen = ThreadNice();
    done.Notify();
  });
  done.WaitForNotification();
  return seen.load();
}

TEST_CASE("A pool's threads run at its niceness, and the caller's stays", "[server]") {
  // 19, the lowest priority: above whatever niceness the test itself runs at.
  const int caller = ThreadNice();
  CHECK(NiceInPool(19) == 19);
  CHECK(NiceInPool(0) == caller);  // 0: the pool's threads inherit the creator's
  CHECK(ThreadNice() == caller);
}

}  // namespace
}  // namespace pqkv::server

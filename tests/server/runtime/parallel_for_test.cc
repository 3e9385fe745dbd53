#include "server/runtime/parallel_for.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "catch2/catch.hpp"
#include "server/runtime/spin_wait.h"
#include "server/runtime/thread_pool.h"

namespace pqkv::server {
namespace {

// Pools that sleep at once and pools whose idle threads poll first (--compute_spin_us).
absl::Duration Spin() { return absl::Microseconds(GENERATE(0, 200)); }

TEST_CASE("ParallelFor runs every index exactly once", "[server]") {
  ThreadPool pool("test", 3, Spin());
  const int n = GENERATE(0, 1, 2, 7, 100);
  std::vector<std::atomic<int>> runs(n);
  ParallelFor(&pool, n, [&](int i) { runs[i].fetch_add(1); });
  for (int i = 0; i < n; ++i) REQUIRE(runs[i].load() == 1);
  std::vector<int> serial(n, 0);
  ParallelFor(nullptr, n, [&](int i) { ++serial[i]; });
  CHECK(std::all_of(serial.begin(), serial.end(), [](int r) { return r == 1; }));
}

TEST_CASE("ParallelFor inside pool threads does not deadlock", "[server]") {
  // Every pool thread runs a ParallelFor of its own: none may wait for work that no
  // thread will start.
  ThreadPool pool("test", 2, Spin());
  std::atomic<int> total{0};
  std::atomic<int> outer_done{0};
  for (int t = 0; t < 4; ++t) {
    pool.Schedule([&] {
      ParallelFor(&pool, 8, [&](int) { total.fetch_add(1); });
      outer_done.fetch_add(1);
    });
  }
  ParallelFor(&pool, 8, [&](int) { total.fetch_add(1); });
  while (outer_done.load() < 4) std::this_thread::yield();
  CHECK(total.load() == 5 * 8);
}

TEST_CASE("ParallelFor waits for helpers that outlast the caller's polling", "[server]") {
  // Index 1 runs on a helper far longer than the caller polls: the caller must sleep
  // until it is done, not return early.
  ThreadPool pool("test", 2, absl::Microseconds(50));
  std::atomic<bool> helper_started{false};
  std::atomic<int> finished{0};
  ParallelFor(&pool, 2, [&](int i) {
    if (i == 0) {
      // Holds the caller (it claims index 0) until a helper has claimed index 1.
      while (!helper_started.load()) std::this_thread::yield();
    } else {
      helper_started.store(true);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    finished.fetch_add(1);
  });
  CHECK(finished.load() == 2);
}

TEST_CASE("SpinWait reports whether the condition came true within the bound", "[server]") {
  std::atomic<bool> flag{false};
  CHECK_FALSE(SpinWait(absl::Microseconds(100), [&] { return flag.load(); }));
  CHECK_FALSE(SpinWait(absl::ZeroDuration(), [&] { return flag.load(); }));
  std::thread setter([&] { flag.store(true); });
  CHECK(SpinWait(absl::Seconds(10), [&] { return flag.load(); }));
  setter.join();
  CHECK(SpinWait(absl::ZeroDuration(), [&] { return flag.load(); }));
}

TEST_CASE("ThreadPool runs what is queued before it is destroyed", "[server]") {
  std::atomic<int> ran{0};
  {
    ThreadPool pool("test", 2, Spin());
    for (int i = 0; i < 50; ++i) pool.Schedule([&] { ran.fetch_add(1); });
  }
  CHECK(ran.load() == 50);
}

}  // namespace
}  // namespace pqkv::server

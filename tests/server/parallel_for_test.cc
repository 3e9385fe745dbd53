#include "server/parallel_for.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "catch2/catch.hpp"
#include "server/thread_pool.h"

namespace pqkv::server {
namespace {

TEST_CASE("ParallelFor runs every index exactly once", "[server]") {
  ThreadPool pool("test", 3);
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
  ThreadPool pool("test", 2);
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

TEST_CASE("ThreadPool runs what is queued before it is destroyed", "[server]") {
  std::atomic<int> ran{0};
  {
    ThreadPool pool("test", 2);
    for (int i = 0; i < 50; ++i) pool.Schedule([&] { ran.fetch_add(1); });
  }
  CHECK(ran.load() == 50);
}

}  // namespace
}  // namespace pqkv::server

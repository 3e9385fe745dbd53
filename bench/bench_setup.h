// What every benchmark prints and computes alike: the Setup line's facts (commit, CPU),
// percentiles of timings, and a timing loop.
#ifndef PQKV_BENCH_BENCH_SETUP_H_
#define PQKV_BENCH_BENCH_SETUP_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pqkv::bench {

// The checkout's short commit (bazel run sets BUILD_WORKSPACE_DIRECTORY), or "unknown".
std::string Commit();
// /proc/cpuinfo's model name, or "unknown".
std::string CpuModel();
// The p-quantile (0..1) of v, nearest rank.
double Percentile(std::vector<double> v, double p);

// Runs fn `repeats` times after one warm-up; returns per-run microseconds. `before`, when
// given, runs untimed before each run (e.g. to evict the caches).
template <typename Fn, typename Before>
std::vector<double> Time(uint32_t repeats, Fn&& fn, Before&& before) {
  before();
  fn();
  std::vector<double> us;
  for (uint32_t r = 0; r < repeats; ++r) {
    before();
    const auto start = std::chrono::steady_clock::now();
    fn();
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  return us;
}

template <typename Fn>
std::vector<double> Time(uint32_t repeats, Fn&& fn) {
  return Time(repeats, fn, [] {});
}

// Writes and reads a buffer several times the last-level cache, so that what a timed run
// reads next comes from memory, as a decode step's rows do (they were last touched a
// whole model's layers ago).
void EvictCaches();

// The re-rank's read floor: touches every 64-byte line of rows[0, n) (row_bytes each), in
// order, prefetching 16 rows ahead as kernels/prefetched_row_dots.h does, and nothing
// else; returns a sum of what it read so that the reads stay.
uint64_t ReadRowLines(const void* const* rows, size_t n, size_t row_bytes);

}  // namespace pqkv::bench

#endif  // PQKV_BENCH_BENCH_SETUP_H_

// kernel_bench: the index build's and the per-dimension scan's inner kernels alone, one
// thread, warm caches, on random inputs; medians over repeats. For comparing kernel
// versions (run two builds one after the other, or with PQKV_DISABLE_AVX512=1 for the
// AVX2 kernels); the end-to-end figures are retrieval_bench's. docs/benchmarks.md.
//
//   bazel build -c opt //bench:kernel_bench && bazel-bin/bench/kernel_bench [--repeats 50]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/dim4_scan.h"
#include "kernels/kmeans.h"
#include "kernels/vector_exp.h"

namespace {

template <typename F>
double MedianUs(int repeats, F&& f) {
  std::vector<double> us;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    f();
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
  return us[us.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using namespace pqkv::kernels;
  int repeats = 50;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--repeats") == 0) repeats = std::max(1, std::atoi(argv[i + 1]));
  }
  std::printf("# simd %s, dim4 kernel %s, %d repeats, one thread\n", SimdLevelName(),
              Dim4KernelName(), repeats);
  std::mt19937 rng(1);
  std::normal_distribution<float> gauss;

  // k-means assignment at the sub-space shapes of 2x6 (training sample) and 4x8 (128 dims).
  struct AssignShape {
    size_t n;
    int dim, k;
  };
  for (const AssignShape s : {AssignShape{8192, 64, 64}, AssignShape{16384, 32, 256}}) {
    std::vector<float> x(s.n * s.dim), c(static_cast<size_t>(s.k) * s.dim), norms(s.k);
    for (float& v : x) v = gauss(rng);
    for (float& v : c) v = gauss(rng);
    CentroidNorms(c.data(), s.k, s.dim, norms.data());
    std::vector<uint32_t> assign(s.n);
    const double us = MedianUs(repeats, [&] {
      AssignNearest(x.data(), s.n, s.dim, s.dim, c.data(), norms.data(), s.k, assign.data(),
                    nullptr);
    });
    std::printf(
        "{\"kernel\": \"AssignNearest\", \"n\": %zu, \"dim\": %d, \"k\": %d, \"median_us\": %.1f, "
        "\"gflops\": %.1f}\n",
        s.n, s.dim, s.k, us, 2.0 * s.n * s.dim * s.k / us / 1e3);
  }

  // Per-dimension scan: one kv head's 32768 tokens at d = 128 (2 MiB of codes) against a
  // GQA group of 4 query heads, in the scan's 512-token chunks, then the exponentials.
  {
    constexpr int kDim = 128, kQueries = 4;
    constexpr size_t kTokens = 32768, kChunk = 512;
    std::vector<uint8_t> blocks(kTokens / kDim4BlockTokens * Dim4BlockBytes(kDim));
    for (uint8_t& b : blocks) b = static_cast<uint8_t>(rng());
    std::vector<int8_t> weights(kQueries * kDim);
    for (int8_t& w : weights) w = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    std::vector<int32_t> dots(kQueries * kChunk);
    std::vector<float> exps(kChunk);
    const size_t chunk_bytes = kChunk / kDim4BlockTokens * Dim4BlockBytes(kDim);
    const double dots_us = MedianUs(repeats, [&] {
      for (size_t c = 0; c < kTokens / kChunk; ++c) {
        Dim4Dots(blocks.data() + c * chunk_bytes, kChunk / kDim4BlockTokens, kDim, weights.data(),
                 kQueries, dots.data(), kChunk);
      }
    });
    std::printf(
        "{\"kernel\": \"Dim4Dots\", \"tokens\": %zu, \"head_dim\": %d, \"queries\": %d, "
        "\"median_us\": %.1f, \"ns_per_token\": %.2f}\n",
        kTokens, kDim, kQueries, dots_us, dots_us * 1e3 / kTokens);
    volatile double sink = 0;
    const double exp_us = MedianUs(repeats, [&] {
      for (size_t c = 0; c < kTokens / kChunk; ++c) {
        for (int g = 0; g < kQueries; ++g) {
          const int32_t* d = dots.data() + g * kChunk;
          const int32_t top = MaxOfInt32(d, kChunk);
          sink =
              sink + ExpAndSumInt32(d, kChunk, 1e-4f, 1e-4f * static_cast<float>(top), exps.data());
        }
      }
    });
    std::printf(
        "{\"kernel\": \"MaxOfInt32+ExpAndSumInt32\", \"tokens\": %zu, \"queries\": %d, "
        "\"median_us\": %.1f, \"ns_per_token\": %.2f}\n",
        kTokens, kQueries, exp_us, exp_us * 1e3 / kTokens);
  }
  return 0;
}

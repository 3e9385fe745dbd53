// kernel_bench: the index build's, the per-dimension scan's and the re-rank's inner
// kernels alone, one thread, on random inputs (warm caches but for the re-rank's cold
// rows); medians over repeats. For comparing kernel
// versions (run two builds one after the other, or with PQKV_DISABLE_AVX512=1 for the
// AVX2 kernels); the end-to-end figures are retrieval_bench's. docs/benchmarks.md.
//
//   bazel build -c opt //bench:kernel_bench && bazel-bin/bench/kernel_bench [--repeats 50]
//       [--small_pages]
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "bench/bench_setup.h"
#include "kernels/cpu_features.h"
#include "kernels/dim4_scan.h"
#include "kernels/dtype_convert.h"
#include "kernels/kmeans.h"
#include "kernels/radix_select.h"
#include "kernels/row_dots.h"
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
  bool small_pages = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
      repeats = std::max(1, std::atoi(argv[i + 1]));
    }
    if (std::strcmp(argv[i], "--small_pages") == 0) small_pages = true;
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

  // The re-rank's last step: the best k = 2048 of its 8192 candidates' scores (softmax
  // probabilities summed over 4 query heads), best first.
  {
    constexpr uint32_t kCandidates = 8192, kKeep = 2048;
    std::vector<float> scores(kCandidates);
    std::vector<uint32_t> best(kKeep);
    for (float& s : scores) s = std::exp(2.0f * gauss(rng)) * 1e-4f;
    const double select_us = MedianUs(repeats, [&] {
      SelectTopK(scores.data(), 0, kCandidates, kKeep, best.data());
    });
    std::printf(
        "{\"kernel\": \"SelectTopK\", \"n\": %u, \"k\": %u, \"median_us\": %.1f}\n",
        kCandidates, kKeep, select_us);
  }

  // The re-rank's row dot products: one kv head's rerank x k = 8192 candidates plus 96
  // sinks and window, a quarter of its 32768 fp16 rows of 128 dims in position order,
  // against 4 query heads. Cold: each repeat reads another head's 8 MiB of rows out of
  // 512 MiB (past any cache), beside a loop that only reads the same rows' cache lines
  // (retrieval_bench's re-rank floor). Warm: the same 8288 rows again and again (2 MiB,
  // in L2/L3): the arithmetic's share.
  {
    constexpr int kDim = 128, kQueries = 4;
    constexpr size_t kHeadRows = 32768, kPicked = 8288, kRowBytes = kDim * 2;
    constexpr size_t kHeads = 64;  // 512 MiB
    // Mapped as the server's K/V arena maps its region: huge pages where the kernel allows
    // (server/memory/page_arena.h), 4 KiB pages with --small_pages.
    const size_t key_count = kHeads * kHeadRows * kDim;
    void* mapped = mmap(nullptr, key_count * 2, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapped == MAP_FAILED) return 1;
    if (!small_pages) madvise(mapped, key_count * 2, MADV_HUGEPAGE);
    uint16_t* const keys = static_cast<uint16_t*>(mapped);
    for (size_t i = 0; i < key_count; ++i) keys[i] = static_cast<uint16_t>(0x3000 + rng() % 0x1000);
    std::vector<float> queries(kQueries * kDim), out(kQueries * kPicked);
    for (float& q : queries) q = gauss(rng);
    std::vector<std::vector<const void*>> rows(kHeads);
    for (size_t h = 0; h < kHeads; ++h) {
      std::vector<uint32_t> picked(kHeadRows);
      for (uint32_t t = 0; t < kHeadRows; ++t) picked[t] = t;
      std::shuffle(picked.begin(), picked.end(), rng);
      picked.resize(kPicked);
      std::sort(picked.begin(), picked.end());
      for (uint32_t t : picked) rows[h].push_back(keys + (h * kHeadRows + t) * kDim);
    }
    size_t head = 0;
    volatile uint64_t sink = 0;
    auto floor_loop = [&](const std::vector<const void*>& r) {
      sink = sink + pqkv::bench::ReadRowLines(r.data(), r.size(), kRowBytes);
    };
    auto dots = [&](const std::vector<const void*>& r) {
      RowDots(ElementType::kFp16, r.data(), r.size(), kDim, queries.data(), kQueries, out.data());
    };
    // Alternated within the repeats, so drift hits both alike.
    std::vector<double> floor_us, dots_us, warm_us;
    for (int i = 0; i < repeats; ++i) {
      floor_us.push_back(MedianUs(1, [&] { floor_loop(rows[head++ % kHeads]); }));
      dots_us.push_back(MedianUs(1, [&] { dots(rows[head++ % kHeads]); }));
      warm_us.push_back(MedianUs(3, [&] { dots(rows[0]); }));
    }
    auto median = [](const std::vector<double>& v) { return pqkv::bench::Percentile(v, 0.5); };
    std::printf(
        "{\"kernel\": \"RowDots\", \"rows\": %zu, \"head_dim\": %d, \"queries\": %d, "
        "\"cold_us\": %.1f, \"warm_us\": %.1f, \"read_floor_us\": %.1f, "
        "\"cold_vs_floor\": %.2f, \"pages\": \"%s\"}\n",
        kPicked, kDim, kQueries, median(dots_us), median(warm_us), median(floor_us),
        median(dots_us) / median(floor_us), small_pages ? "4KiB" : "huge where allowed");
    munmap(mapped, key_count * 2);
  }
  return 0;
}

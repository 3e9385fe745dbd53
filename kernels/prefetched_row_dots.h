// The loop both SIMD RowDots kernels share (row_dots_avx2.cc, row_dots_avx512.cc): rows
// two at a time, their dot products taken where the rows lie, and for each pair the
// pair kAheadRows further on prefetched into L2. Why: the prefetches are spread evenly
// through the arithmetic, so the core keeps about as many cache lines in flight as a
// loop that only reads them (the re-rank's read floor) while its FMAs run. The loop
// before (stops 25-28) copied 16 rows at a time into an L1 buffer after prefetching the
// next 16 in one burst: the burst waited for the core's few line fill buffers, the
// arithmetic queued behind it, and reads and FMAs hardly overlapped (on the Intel Xeon
// of docs/benchmarks.md, one thread, bench/kernel_bench's RowDots: 1.13x slower with the
// rows in memory, 1.17x with them in L2/L3; on both cores 1.76-1.84x the read floor
// against 1.55-1.59x, bench/probes/rerank_rows_probe.cc).
//
// Included only by those kernels' files, each instantiating it with a kernel type of its
// own (internal linkage), compiled for its own instruction set. Kernel provides
//   template <int H> static void Heads(bool fp16, const void* a, const void* b,
//                                      int head_dim, const float* queries, size_t n,
//                                      size_t r, float* out);
// Heads<H> writes out[g * n + r] = queries[g] . a for g < H, and out[g * n + r + 1] =
// queries[g] . b when b is not null.
#ifndef PQKV_KERNELS_PREFETCHED_ROW_DOTS_H_
#define PQKV_KERNELS_PREFETCHED_ROW_DOTS_H_

#include <xmmintrin.h>

#include <algorithm>
#include <cstddef>

namespace pqkv::kernels::prefetched {

constexpr int kQueryHeads = 4;     // query heads per pass over a row pair
constexpr size_t kAheadRows = 16;  // prefetch distance (8 and 32 measured no better)

template <typename Kernel>
void RowDots(bool fp16, const void* const* rows, size_t n, int head_dim, const float* queries,
             int group, float* out) {
  const size_t row_bytes = static_cast<size_t>(head_dim) * (fp16 ? 2 : 4);
  auto prefetch = [row_bytes](const void* row) {
    const char* p = static_cast<const char*>(row);
    for (size_t b = 0; b < row_bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T2);
  };
  for (size_t r = 0; r < std::min(n, kAheadRows); ++r) prefetch(rows[r]);
  for (size_t r = 0; r < n; r += 2) {
    for (size_t ahead = r + kAheadRows; ahead < std::min(n, r + kAheadRows + 2); ++ahead) {
      prefetch(rows[ahead]);
    }
    const void* second = r + 1 < n ? rows[r + 1] : nullptr;
    for (int g = 0; g < group; g += kQueryHeads) {
      const float* q = queries + static_cast<size_t>(g) * head_dim;
      float* o = out + static_cast<size_t>(g) * n;
      switch (std::min(kQueryHeads, group - g)) {
        case 4:
          Kernel::template Heads<4>(fp16, rows[r], second, head_dim, q, n, r, o);
          break;
        case 3:
          Kernel::template Heads<3>(fp16, rows[r], second, head_dim, q, n, r, o);
          break;
        case 2:
          Kernel::template Heads<2>(fp16, rows[r], second, head_dim, q, n, r, o);
          break;
        default:
          Kernel::template Heads<1>(fp16, rows[r], second, head_dim, q, n, r, o);
          break;
      }
    }
  }
}

}  // namespace pqkv::kernels::prefetched

#endif  // PQKV_KERNELS_PREFETCHED_ROW_DOTS_H_

// The loop both SIMD RowDots kernels share (row_dots_avx2.cc, row_dots_avx512.cc): rows
// in chunks of 16, each chunk first copied into a buffer in L1 and its dot products taken
// there, the next chunk's rows prefetched into L2 meanwhile. Why: the copy's loads depend
// on nothing, so the core keeps a chunk's cache lines in flight together; fused with the
// FMAs, the loads of one row waited behind the FMAs of the rows before it (the re-rank
// measured about 20% slower). An L1 prefetch holds one of the core's few L1 miss buffers
// until its line arrives, which kept fewer rows in flight (1.2-1.3x slower than L2).
//
// Included only by those kernels' files, each instantiating it with a kernel type of its
// own (internal linkage), compiled for its own instruction set. Kernel provides:
//   static constexpr size_t kCopyBytes;   // bytes one Copy step moves
//   static void Copy(const char* src, char* dst, size_t bytes);  // bytes % kCopyBytes == 0
//   template <int H> static void Heads(bool fp16, const void* a, const void* b,
//                                      int head_dim, const float* queries, size_t n,
//                                      size_t r, float* out);
// Heads<H> writes out[g * n + r] = queries[g] . a for g < H, and out[g * n + r + 1] =
// queries[g] . b when b is not null.
#ifndef PQKV_KERNELS_STAGED_ROW_DOTS_H_
#define PQKV_KERNELS_STAGED_ROW_DOTS_H_

#include <xmmintrin.h>

#include <algorithm>
#include <cstddef>

namespace pqkv::kernels::staged {

constexpr int kQueryHeads = 4;        // query heads per pass over a row pair
constexpr size_t kChunkRows = 16;     // rows copied to L1 together
constexpr size_t kPrefetchRows = 16;  // rows ahead
constexpr size_t kMaxStagedRowBytes = 1024;

template <typename Kernel>
void RowDots(bool fp16, const void* const* rows, size_t n, int head_dim, const float* queries,
             int group, float* out) {
  const size_t row_bytes = static_cast<size_t>(head_dim) * (fp16 ? 2 : 4);
  auto prefetch = [row_bytes](const void* row) {
    const char* p = static_cast<const char*>(row);
    for (size_t b = 0; b < row_bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T2);
  };
  alignas(64) char buffer[kChunkRows * kMaxStagedRowBytes];
  const bool staged = row_bytes <= kMaxStagedRowBytes && row_bytes % Kernel::kCopyBytes == 0;
  const void* staged_rows[kChunkRows];
  for (size_t r = 0; r < std::min(n, kPrefetchRows); ++r) prefetch(rows[r]);
  for (size_t begin = 0; begin < n; begin += kChunkRows) {
    const size_t end = std::min(n, begin + kChunkRows);
    for (size_t ahead = begin + kPrefetchRows; ahead < std::min(n, end + kPrefetchRows); ++ahead) {
      prefetch(rows[ahead]);
    }
    const void* const* chunk = rows + begin;
    if (staged) {
      for (size_t r = begin; r < end; ++r) {
        char* dst = buffer + (r - begin) * row_bytes;
        Kernel::Copy(static_cast<const char*>(rows[r]), dst, row_bytes);
        staged_rows[r - begin] = dst;
      }
      chunk = staged_rows;
    }
    const size_t m = end - begin;
    for (size_t r = 0; r < m; r += 2) {
      const void* second = r + 1 < m ? chunk[r + 1] : nullptr;
      for (int g = 0; g < group; g += kQueryHeads) {
        const float* q = queries + static_cast<size_t>(g) * head_dim;
        float* o = out + static_cast<size_t>(g) * n + begin;
        switch (std::min(kQueryHeads, group - g)) {
          case 4:
            Kernel::template Heads<4>(fp16, chunk[r], second, head_dim, q, n, r, o);
            break;
          case 3:
            Kernel::template Heads<3>(fp16, chunk[r], second, head_dim, q, n, r, o);
            break;
          case 2:
            Kernel::template Heads<2>(fp16, chunk[r], second, head_dim, q, n, r, o);
            break;
          default:
            Kernel::template Heads<1>(fp16, chunk[r], second, head_dim, q, n, r, o);
            break;
        }
      }
    }
  }
}

}  // namespace pqkv::kernels::staged

#endif  // PQKV_KERNELS_STAGED_ROW_DOTS_H_

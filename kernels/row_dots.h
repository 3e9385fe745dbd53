// RowDots: dot products of a few queries with gathered key rows in their stored dtype,
// the inner loop of exact re-ranking (server/index/exact_rerank.h).
//
// out[g * n + r] = queries[g] . rows[r] for r in [0, n), g in [0, group). Rows are
// head_dim elements of `dtype` each (fp16, bf16 or fp32), read where they lie (no gather
// into a buffer first). AVX-512, else AVX2 + F16C, where available (fp16 and fp32 rows),
// else portable code with eight partial sums; they differ by float summation order only.
//
// Pure, thread-safe.
#ifndef PQKV_KERNELS_ROW_DOTS_H_
#define PQKV_KERNELS_ROW_DOTS_H_

#include <cstddef>

#include "kernels/dtype_convert.h"

namespace pqkv::kernels {

void RowDots(ElementType dtype, const void* const* rows, size_t n, int head_dim,
             const float* queries, int group, float* out);

// The portable code whatever the CPU: the AVX2 path's test oracle.
void RowDotsPortable(ElementType dtype, const void* const* rows, size_t n, int head_dim,
                     const float* queries, int group, float* out);

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_ROW_DOTS_H_

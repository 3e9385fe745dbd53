#include "kernels/row_dots.h"

#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/simd_avx2.h"
#include "kernels/simd_avx512.h"

namespace pqkv::kernels {

void RowDotsPortable(ElementType dtype, const void* const* rows, size_t n, int head_dim,
                     const float* queries, int group, float* out) {
  constexpr int kLanes = 8;  // independent sums, so the compiler can vectorise
  std::vector<float> row(head_dim);
  for (size_t r = 0; r < n; ++r) {
    ToFloat(dtype, rows[r], head_dim, row.data());
    for (int g = 0; g < group; ++g) {
      const float* q = queries + static_cast<size_t>(g) * head_dim;
      float acc[kLanes] = {};
      int i = 0;
      for (; i + kLanes <= head_dim; i += kLanes) {
        for (int j = 0; j < kLanes; ++j) acc[j] += q[i + j] * row[i + j];
      }
      float dot = 0;
      for (; i < head_dim; ++i) dot += q[i] * row[i];
      for (int j = 0; j < kLanes; ++j) dot += acc[j];
      out[static_cast<size_t>(g) * n + r] = dot;
    }
  }
}

void RowDots(ElementType dtype, const void* const* rows, size_t n, int head_dim,
             const float* queries, int group, float* out) {
  if (UseAvx512() && dtype != ElementType::kBf16 && head_dim % 16 == 0) {
    avx512::RowDots(dtype == ElementType::kFp16, rows, n, head_dim, queries, group, out);
    return;
  }
  if (UseAvx2() && dtype != ElementType::kBf16 && head_dim % 8 == 0) {
    avx2::RowDots(dtype == ElementType::kFp16, rows, n, head_dim, queries, group, out);
    return;
  }
  RowDotsPortable(dtype, rows, n, head_dim, queries, group, out);
}

}  // namespace pqkv::kernels

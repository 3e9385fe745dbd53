// AVX2 + F16C row dot products (kernels/row_dots.h); compiled with -mavx2 -mfma -mf16c.
#include <immintrin.h>

#include "kernels/simd_avx2.h"

namespace pqkv::kernels::avx2 {

void RowDots(bool fp16, const void* const* rows, size_t n, int head_dim, const float* queries,
             int group, float* out) {
  for (size_t r = 0; r < n; ++r) {
    for (int g = 0; g < group; ++g) {
      const float* q = queries + static_cast<size_t>(g) * head_dim;
      __m256 acc = _mm256_setzero_ps();
      for (int i = 0; i < head_dim; i += 8) {
        const __m256 k = fp16 ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
                                    static_cast<const uint16_t*>(rows[r]) + i)))
                              : _mm256_loadu_ps(static_cast<const float*>(rows[r]) + i);
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), k, acc);
      }
      // Horizontal sum of the 8 lanes.
      const __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
      out[static_cast<size_t>(g) * n + r] =
          _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
    }
  }
}

}  // namespace pqkv::kernels::avx2

// AVX2 + F16C row dot products (kernels/row_dots.h); compiled with -mavx2 -mfma -mf16c.
//
// Rows go two at a time against up to four query heads: each 8-element step loads a query
// vector once for both rows, and the eight sums (two rows x four heads) are eight FMA
// chains side by side, reduced together at the end. The rows are read where they lie,
// prefetched ahead (kernels/prefetched_row_dots.h: why).
#include <immintrin.h>


#include "kernels/simd_avx2.h"
#include "kernels/prefetched_row_dots.h"

namespace pqkv::kernels::avx2 {
namespace {

inline __m256 Load8(bool fp16, const void* row, int i) {
  return fp16 ? _mm256_cvtph_ps(_mm_loadu_si128(
                    reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i)))
              : _mm256_loadu_ps(static_cast<const float*>(row) + i);
}

inline float HorizontalSum(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
}

// Lane i of the result is the sum of v[i]'s lanes.
inline __m256 HorizontalSums(const __m256 (&v)[8]) {
  const __m256 a = _mm256_hadd_ps(v[0], v[1]), b = _mm256_hadd_ps(v[2], v[3]);
  const __m256 c = _mm256_hadd_ps(v[4], v[5]), d = _mm256_hadd_ps(v[6], v[7]);
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  // ab holds v[0..3]'s partial sums in its low half and again in its high half.
  return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

// Heads [0, H) of `queries` against rows a and b (rows r and r + 1 of the output).
template <int H>
inline void TwoRows(bool fp16, const void* a, const void* b, int head_dim, const float* queries,
                    size_t n, size_t r, float* out) {
  __m256 sums[2 * H];
  for (__m256& s : sums) s = _mm256_setzero_ps();
  for (int i = 0; i < head_dim; i += 8) {
    const __m256 ka = Load8(fp16, a, i);
    const __m256 kb = Load8(fp16, b, i);
    for (int g = 0; g < H; ++g) {
      const __m256 q = _mm256_loadu_ps(queries + static_cast<size_t>(g) * head_dim + i);
      sums[g] = _mm256_fmadd_ps(q, ka, sums[g]);
      sums[H + g] = _mm256_fmadd_ps(q, kb, sums[H + g]);
    }
  }
  if constexpr (H == 4) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, HorizontalSums(sums));
    for (int g = 0; g < H; ++g) {
      out[static_cast<size_t>(g) * n + r] = lanes[g];
      out[static_cast<size_t>(g) * n + r + 1] = lanes[H + g];
    }
  } else {
    for (int g = 0; g < H; ++g) {
      out[static_cast<size_t>(g) * n + r] = HorizontalSum(sums[g]);
      out[static_cast<size_t>(g) * n + r + 1] = HorizontalSum(sums[H + g]);
    }
  }
}

// Heads [0, H) against one row (an odd count's last).
template <int H>
inline void OneRow(bool fp16, const void* row, int head_dim, const float* queries, size_t n,
                   size_t r, float* out) {
  __m256 sums[H];
  for (__m256& s : sums) s = _mm256_setzero_ps();
  for (int i = 0; i < head_dim; i += 8) {
    const __m256 k = Load8(fp16, row, i);
    for (int g = 0; g < H; ++g) {
      sums[g] = _mm256_fmadd_ps(_mm256_loadu_ps(queries + static_cast<size_t>(g) * head_dim + i), k,
                                sums[g]);
    }
  }
  for (int g = 0; g < H; ++g) out[static_cast<size_t>(g) * n + r] = HorizontalSum(sums[g]);
}

struct Kernel {
  template <int H>
  static void Heads(bool fp16, const void* a, const void* b, int head_dim, const float* queries,
                    size_t n, size_t r, float* out) {
    if (b != nullptr) {
      TwoRows<H>(fp16, a, b, head_dim, queries, n, r, out);
    } else {
      OneRow<H>(fp16, a, head_dim, queries, n, r, out);
    }
  }
};

}  // namespace

void RowDots(bool fp16, const void* const* rows, size_t n, int head_dim, const float* queries,
             int group, float* out) {
  prefetched::RowDots<Kernel>(fp16, rows, n, head_dim, queries, group, out);
}

}  // namespace pqkv::kernels::avx2

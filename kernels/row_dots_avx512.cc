// AVX-512 row dot products (kernels/row_dots.h); compiled with -mavx512f -mavx512vl.
//
// The AVX2 kernel's row pairs against up to four query heads (row_dots_avx2.cc) in
// 16-lane steps: half the instructions per row. The rows are read where they lie,
// prefetched ahead (kernels/prefetched_row_dots.h).
#include <immintrin.h>

#include <cstdint>

#include "kernels/simd_avx512.h"
#include "kernels/prefetched_row_dots.h"

namespace pqkv::kernels::avx512 {
namespace {

inline __m512 Load16(bool fp16, const void* row, int i) {
  return fp16 ? _mm512_cvtph_ps(_mm256_loadu_si256(
                    reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + i)))
              : _mm512_loadu_ps(static_cast<const float*>(row) + i);
}

// The sum of v's two halves.
inline __m256 Fold(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v),
                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

inline float HorizontalSum(__m512 v) {
  const __m256 folded = Fold(v);
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(folded), _mm256_extractf128_ps(folded, 1));
  const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
}

// Lane i of the result is the sum of v[i]'s lanes.
inline __m256 HorizontalSums(const __m512 (&v)[8]) {
  __m256 f[8];
  for (int i = 0; i < 8; ++i) f[i] = Fold(v[i]);
  const __m256 a = _mm256_hadd_ps(f[0], f[1]), b = _mm256_hadd_ps(f[2], f[3]);
  const __m256 c = _mm256_hadd_ps(f[4], f[5]), d = _mm256_hadd_ps(f[6], f[7]);
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

template <int H>
inline void TwoRows(bool fp16, const void* a, const void* b, int head_dim, const float* queries,
                    size_t n, size_t r, float* out) {
  __m512 sums[8];
  for (__m512& s : sums) s = _mm512_setzero_ps();
  for (int i = 0; i < head_dim; i += 16) {
    const __m512 ka = Load16(fp16, a, i);
    const __m512 kb = Load16(fp16, b, i);
    for (int g = 0; g < H; ++g) {
      const __m512 q = _mm512_loadu_ps(queries + static_cast<size_t>(g) * head_dim + i);
      sums[g] = _mm512_fmadd_ps(q, ka, sums[g]);
      sums[4 + g] = _mm512_fmadd_ps(q, kb, sums[4 + g]);
    }
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, HorizontalSums(sums));
  for (int g = 0; g < H; ++g) {
    out[static_cast<size_t>(g) * n + r] = lanes[g];
    out[static_cast<size_t>(g) * n + r + 1] = lanes[4 + g];
  }
}

template <int H>
inline void OneRow(bool fp16, const void* row, int head_dim, const float* queries, size_t n,
                   size_t r, float* out) {
  for (int g = 0; g < H; ++g) {
    __m512 sum = _mm512_setzero_ps();
    for (int i = 0; i < head_dim; i += 16) {
      sum = _mm512_fmadd_ps(_mm512_loadu_ps(queries + static_cast<size_t>(g) * head_dim + i),
                            Load16(fp16, row, i), sum);
    }
    out[static_cast<size_t>(g) * n + r] = HorizontalSum(sum);
  }
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

}  // namespace pqkv::kernels::avx512

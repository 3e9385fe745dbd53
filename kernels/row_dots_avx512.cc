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

// Lane i of the result is the sum of v[i]'s lanes: a transposing tree, each level adding
// pairs of vectors with their lanes interleaved (24 shuffles and adds for the 8 vectors).
inline __m256 HorizontalSums(__m512 v0, __m512 v1, __m512 v2, __m512 v3, __m512 v4, __m512 v5,
                             __m512 v6, __m512 v7) {
  // Pairs: each 128-bit block holds [v(2i), v(2i+1), v(2i), v(2i+1)] partial sums.
  const auto pair = [](__m512 x, __m512 y) {
    return _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
  };
  // Quads: each block holds [v(4j) .. v(4j + 3)] partial sums.
  const auto quad = [](__m512 x, __m512 y) {
    const __m512d a = _mm512_castps_pd(x), b = _mm512_castps_pd(y);
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  };
  const __m512 low = quad(pair(v0, v1), pair(v2, v3)), high = quad(pair(v4, v5), pair(v6, v7));
  // Blocks [v0-3, v0-3, v4-7, v4-7], then the two halves of each added.
  const __m512 halves = _mm512_add_ps(_mm512_shuffle_f32x4(low, high, 0x88),
                                      _mm512_shuffle_f32x4(low, high, 0xDD));
  const __m512 paired = _mm512_shuffle_f32x4(halves, halves, _MM_SHUFFLE(3, 1, 2, 0));
  return _mm256_add_ps(_mm512_castps512_ps256(paired),
                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(paired), 1)));
}

// Heads [0, H) of `queries` against rows a and b (rows r and r + 1 of the output). The
// sums are named values, not an array: GCC zeroed an array of them with `rep stos` and
// spilled it to the stack around the reduction, in a call it did not inline
// (bench/kernel_bench RowDots with the rows in L2/L3: 221 -> 172 us a kv head).
template <int H>
[[gnu::always_inline]] inline void TwoRows(bool fp16, const void* a, const void* b, int head_dim,
                                           const float* queries, size_t n, size_t r, float* out) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
  const size_t stride = static_cast<size_t>(head_dim);
  for (int i = 0; i < head_dim; i += 16) {
    const __m512 ka = Load16(fp16, a, i);
    const __m512 kb = Load16(fp16, b, i);
    const float* q = queries + i;
    const __m512 q0 = _mm512_loadu_ps(q);
    a0 = _mm512_fmadd_ps(q0, ka, a0);
    b0 = _mm512_fmadd_ps(q0, kb, b0);
    if constexpr (H > 1) {
      const __m512 q1 = _mm512_loadu_ps(q + stride);
      a1 = _mm512_fmadd_ps(q1, ka, a1);
      b1 = _mm512_fmadd_ps(q1, kb, b1);
    }
    if constexpr (H > 2) {
      const __m512 q2 = _mm512_loadu_ps(q + 2 * stride);
      a2 = _mm512_fmadd_ps(q2, ka, a2);
      b2 = _mm512_fmadd_ps(q2, kb, b2);
    }
    if constexpr (H > 3) {
      const __m512 q3 = _mm512_loadu_ps(q + 3 * stride);
      a3 = _mm512_fmadd_ps(q3, ka, a3);
      b3 = _mm512_fmadd_ps(q3, kb, b3);
    }
  }
  // Lanes [a.q0, b.q0, a.q1, b.q1, ...]: each head's two outputs are adjacent.
  const __m256 sums = HorizontalSums(a0, b0, a1, b1, a2, b2, a3, b3);
  const __m128 heads01 = _mm256_castps256_ps128(sums), heads23 = _mm256_extractf128_ps(sums, 1);
  _mm_storel_pi(reinterpret_cast<__m64*>(out + r), heads01);
  if constexpr (H > 1) _mm_storeh_pi(reinterpret_cast<__m64*>(out + n + r), heads01);
  if constexpr (H > 2) _mm_storel_pi(reinterpret_cast<__m64*>(out + 2 * n + r), heads23);
  if constexpr (H > 3) _mm_storeh_pi(reinterpret_cast<__m64*>(out + 3 * n + r), heads23);
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
  [[gnu::always_inline]] static void Heads(bool fp16, const void* a, const void* b, int head_dim,
                                           const float* queries, size_t n, size_t r, float* out) {
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

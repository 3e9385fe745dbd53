// AVX2 + F16C row dot products (kernels/row_dots.h); compiled with -mavx2 -mfma -mf16c.
//
// Each row is read (and converted from fp16) once for up to four query heads at a time,
// and every head keeps two partial sums, so eight FMA chains run side by side instead of
// one chain per (row, head) that waits on its own latency. The next rows are prefetched:
// re-ranking reads them from paged storage in position order, not contiguously.
#include <immintrin.h>

#include <algorithm>

#include "kernels/simd_avx2.h"

namespace pqkv::kernels::avx2 {
namespace {

constexpr int kHeads = 4;             // query heads per pass over a row
constexpr size_t kPrefetchRows = 16;  // rows ahead

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

inline void Prefetch(const void* row, size_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
}

// Heads [0, H) of `queries` against one row.
template <int H>
inline void Heads(bool fp16, const void* row, int head_dim, const float* queries, size_t n,
                  size_t r, float* out) {
  __m256 even[H], odd[H];
  for (int g = 0; g < H; ++g) even[g] = odd[g] = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= head_dim; i += 16) {
    const __m256 k0 = Load8(fp16, row, i);
    const __m256 k1 = Load8(fp16, row, i + 8);
    for (int g = 0; g < H; ++g) {
      const float* q = queries + static_cast<size_t>(g) * head_dim + i;
      even[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q), k0, even[g]);
      odd[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8), k1, odd[g]);
    }
  }
  if (i < head_dim) {  // head_dim = 16 m + 8
    const __m256 k0 = Load8(fp16, row, i);
    for (int g = 0; g < H; ++g) {
      const float* q = queries + static_cast<size_t>(g) * head_dim + i;
      even[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q), k0, even[g]);
    }
  }
  for (int g = 0; g < H; ++g) {
    out[static_cast<size_t>(g) * n + r] = HorizontalSum(_mm256_add_ps(even[g], odd[g]));
  }
}

}  // namespace

void RowDots(bool fp16, const void* const* rows, size_t n, int head_dim, const float* queries,
             int group, float* out) {
  const size_t row_bytes = static_cast<size_t>(head_dim) * (fp16 ? 2 : 4);
  for (size_t r = 0; r < std::min(n, kPrefetchRows); ++r) Prefetch(rows[r], row_bytes);
  for (size_t r = 0; r < n; ++r) {
    if (r + kPrefetchRows < n) Prefetch(rows[r + kPrefetchRows], row_bytes);
    for (int g = 0; g < group; g += kHeads) {
      const float* q = queries + static_cast<size_t>(g) * head_dim;
      float* o = out + static_cast<size_t>(g) * n;
      switch (std::min(kHeads, group - g)) {
        case 4:
          Heads<4>(fp16, rows[r], head_dim, q, n, r, o);
          break;
        case 3:
          Heads<3>(fp16, rows[r], head_dim, q, n, r, o);
          break;
        case 2:
          Heads<2>(fp16, rows[r], head_dim, q, n, r, o);
          break;
        default:
          Heads<1>(fp16, rows[r], head_dim, q, n, r, o);
          break;
      }
    }
  }
}

}  // namespace pqkv::kernels::avx2

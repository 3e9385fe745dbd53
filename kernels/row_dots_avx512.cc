// AVX-512 row dot products (kernels/row_dots.h); compiled with -mavx512f -mavx512vl.
//
// The AVX2 kernel's scheme (kernels/row_dots_avx2.cc: chunks of rows copied into L1, then
// row pairs against up to four query heads, the next chunk prefetched into L2) in 16-lane
// steps: half the instructions per row.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels/simd_avx512.h"

namespace pqkv::kernels::avx512 {
namespace {

constexpr int kHeads = 4;
constexpr size_t kPrefetchRows = 16;
constexpr size_t kChunkRows = 16;
constexpr size_t kMaxStagedRowBytes = 1024;

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

inline void Prefetch(const void* row, size_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T2);
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

template <int H>
void HeadsOf(bool fp16, const void* const* rows, size_t n, size_t r, bool pair, int head_dim,
             const float* queries, float* out) {
  if (pair) {
    TwoRows<H>(fp16, rows[r], rows[r + 1], head_dim, queries, n, r, out);
  } else {
    OneRow<H>(fp16, rows[r], head_dim, queries, n, r, out);
  }
}

}  // namespace

void RowDots(bool fp16, const void* const* rows, size_t n, int head_dim, const float* queries,
             int group, float* out) {
  const size_t row_bytes = static_cast<size_t>(head_dim) * (fp16 ? 2 : 4);
  alignas(64) char buffer[kChunkRows * kMaxStagedRowBytes];
  const bool staged = row_bytes <= kMaxStagedRowBytes && row_bytes % 64 == 0;
  const void* staged_rows[kChunkRows];
  for (size_t r = 0; r < std::min(n, kPrefetchRows); ++r) Prefetch(rows[r], row_bytes);
  for (size_t begin = 0; begin < n; begin += kChunkRows) {
    const size_t end = std::min(n, begin + kChunkRows);
    for (size_t ahead = begin + kPrefetchRows; ahead < std::min(n, end + kPrefetchRows); ++ahead) {
      Prefetch(rows[ahead], row_bytes);
    }
    const void* const* chunk = rows + begin;
    if (staged) {
      for (size_t r = begin; r < end; ++r) {
        const char* src = static_cast<const char*>(rows[r]);
        char* dst = buffer + (r - begin) * row_bytes;
        for (size_t b = 0; b < row_bytes; b += 64) {
          _mm512_store_si512(dst + b, _mm512_loadu_si512(src + b));
        }
        staged_rows[r - begin] = dst;
      }
      chunk = staged_rows;
    }
    const size_t m = end - begin;
    for (size_t r = 0; r < m; r += 2) {
      const bool pair = r + 1 < m;
      for (int g = 0; g < group; g += kHeads) {
        const float* q = queries + static_cast<size_t>(g) * head_dim;
        float* o = out + static_cast<size_t>(g) * n + begin;
        switch (std::min(kHeads, group - g)) {
          case 4:
            HeadsOf<4>(fp16, chunk, n, r, pair, head_dim, q, o);
            break;
          case 3:
            HeadsOf<3>(fp16, chunk, n, r, pair, head_dim, q, o);
            break;
          case 2:
            HeadsOf<2>(fp16, chunk, n, r, pair, head_dim, q, o);
            break;
          default:
            HeadsOf<1>(fp16, chunk, n, r, pair, head_dim, q, o);
            break;
        }
      }
    }
  }
}

}  // namespace pqkv::kernels::avx512

// AVX2 + F16C row dot products (kernels/row_dots.h); compiled with -mavx2 -mfma -mf16c.
//
// Rows go two at a time against up to four query heads: each 8-element step loads a query
// vector once for both rows, and the eight sums (two rows x four heads) are eight FMA
// chains side by side, reduced together at the end. Rows lie scattered in paged storage
// and a re-rank is bound by how many of their cache lines are in flight, so rows come in
// chunks of 16: a chunk is first copied into a buffer in L1, then its dot products are
// taken there. The copy's loads depend on nothing, so the core keeps a chunk's lines in
// flight together; fused with the FMAs, the loads of one row waited behind the FMAs of
// the rows before it (the re-rank measured about 20% slower). The next chunk's rows are
// prefetched into L2 meanwhile (an L1 prefetch holds one of the core's few L1 miss
// buffers until its line arrives, which kept fewer rows in flight: 1.2-1.3x slower).
#include <immintrin.h>

#include <algorithm>

#include "kernels/simd_avx2.h"

namespace pqkv::kernels::avx2 {
namespace {

constexpr int kHeads = 4;             // query heads per pass over a row pair
constexpr size_t kPrefetchRows = 16;  // rows ahead
constexpr size_t kChunkRows = 16;     // rows copied to L1 together
constexpr size_t kMaxStagedRowBytes = 1024;

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

inline void Prefetch(const void* row, size_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T2);
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
  const bool staged = row_bytes <= kMaxStagedRowBytes && row_bytes % 32 == 0;
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
        for (size_t b = 0; b < row_bytes; b += 32) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(dst + b),
                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + b)));
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

}  // namespace pqkv::kernels::avx2

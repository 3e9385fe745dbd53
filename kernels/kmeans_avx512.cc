// AVX-512 nearest-centroid assignment (kernels/kmeans.h); compiled with -mavx512f -mfma.
//
// The AVX2 kernel's scheme (kmeans_avx2.cc) at twice the width and twice the registers:
// centroids laid out once per call as blocks of 32 (kernels/centroid_blocks.h); points go
// 12 at a time, and for each block 24 accumulators hold the 12 x 32 dot products (per dimension: 2
// loads, 12 broadcasts, 24 FMAs). On a core with two 512-bit FMA units that is twice the AVX2
// kernel's peak (docs/benchmarks.md, "Index build"). Each point's running (distance, index) per
// lane sees its centroids in increasing order and keeps the first strict minimum; the final
// reduction takes the lowest index among equal distances, so ties go to the lower index.
// Dot products are summed in dimension order by FMA, as in the AVX2 kernel: the two give
// the same bits.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <utility>

#include "kernels/centroid_blocks.h"
#include "kernels/simd_avx512.h"

namespace pqkv::kernels::avx512 {
namespace {

constexpr int kPoints = 12;
constexpr int kBlock = 32;

struct Best {
  __m512 value;
  __m512i index;
};

inline void Fold(__m512 dot, __m512 norms, __m512i index, Best* best) {
  const __m512 d = _mm512_fmadd_ps(dot, _mm512_set1_ps(-2.0f), norms);
  const __mmask16 lt = _mm512_cmp_ps_mask(d, best->value, _CMP_LT_OQ);
  best->value = _mm512_mask_mov_ps(best->value, lt, d);
  best->index = _mm512_mask_mov_epi32(best->index, lt, index);
}

template <int P>
inline void Block(const float* const* x, int dim, const float* block, const float* norms, int c0,
                  Best* best) {
  __m512 lo[P], hi[P];
#pragma GCC unroll 12
  for (int p = 0; p < P; ++p) lo[p] = hi[p] = _mm512_setzero_ps();
  for (int i = 0; i < dim; ++i) {
    const __m512 c_lo = _mm512_loadu_ps(block + i * kBlock);
    const __m512 c_hi = _mm512_loadu_ps(block + i * kBlock + 16);
#pragma GCC unroll 12
    for (int p = 0; p < P; ++p) {
      const __m512 xv = _mm512_set1_ps(x[p][i]);
      lo[p] = _mm512_fmadd_ps(xv, c_lo, lo[p]);
      hi[p] = _mm512_fmadd_ps(xv, c_hi, hi[p]);
    }
  }
  const __m512 n_lo = _mm512_loadu_ps(norms + c0), n_hi = _mm512_loadu_ps(norms + c0 + 16);
  const __m512i i_lo =
      _mm512_add_epi32(_mm512_set1_epi32(c0),
                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __m512i i_hi = _mm512_add_epi32(i_lo, _mm512_set1_epi32(16));
#pragma GCC unroll 12
  for (int p = 0; p < P; ++p) {
    Fold(lo[p], n_lo, i_lo, &best[p]);
    Fold(hi[p], n_hi, i_hi, &best[p]);
  }
}

template <int P>
void Group(const float* points, size_t stride, int dim, const CentroidBlocks& centroids,
           uint32_t* assign, float* distances) {
  const float* x[P];
  for (int p = 0; p < P; ++p) x[p] = points + p * stride;
  Best best[P];
  for (int p = 0; p < P; ++p) {
    best[p].value = _mm512_set1_ps(std::numeric_limits<float>::infinity());
    best[p].index = _mm512_setzero_si512();
  }
  for (int b = 0; b < centroids.num_blocks; ++b) {
    Block<P>(x, dim, centroids.blocks.data() + static_cast<size_t>(b) * dim * kBlock,
             centroids.norms.data(), b * kBlock, best);
  }
  // Per point: the smallest distance over the lanes, then the lowest index among the lanes
  // that hold it (branch-free; a scalar loop here cost a third of the time at k = 64).
  for (int p = 0; p < P; ++p) {
    const float v = _mm512_reduce_min_ps(best[p].value);
    const __mmask16 at_min = _mm512_cmp_ps_mask(best[p].value, _mm512_set1_ps(v), _CMP_EQ_OQ);
    assign[p] = _mm512_mask_reduce_min_epu32(at_min, best[p].index);
    if (distances != nullptr) distances[p] = v;
  }
}

using GroupFn = void (*)(const float*, size_t, int, const CentroidBlocks&, uint32_t*, float*);

// kGroups[c - 1] = Group<c> for c = 1 .. kPoints: full groups and the tail of n % kPoints.
template <size_t... I>
constexpr std::array<GroupFn, sizeof...(I)> GroupTable(std::index_sequence<I...>) {
  return {{&Group<static_cast<int>(I) + 1>...}};
}

}  // namespace

void AssignNearest(const float* points, size_t n, int dim, size_t stride, const float* centroids,
                   const float* c_norms, int k, uint32_t* assign, float* distances) {
  const CentroidBlocks blocks = LayOutCentroidBlocks<kBlock>(centroids, c_norms, k, dim);
  static constexpr std::array<GroupFn, kPoints> kGroups =
      GroupTable(std::make_index_sequence<kPoints>());
  for (size_t r = 0; r < n; r += kPoints) {
    const size_t count = std::min<size_t>(kPoints, n - r);
    kGroups[count - 1](points + r * stride, stride, dim, blocks, assign + r,
                       distances == nullptr ? nullptr : distances + r);
  }
}

}  // namespace pqkv::kernels::avx512

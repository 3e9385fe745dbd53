// AVX2 + FMA nearest-centroid assignment (kernels/kmeans.h); compiled with -mavx2 -mfma.
//
// Centroids are laid out once per call as blocks of 16 (kernels/centroid_blocks.h). Points
// go 6 at a time: for each block,
// 12 accumulators hold the 6 x 16 dot products (per dimension: 2 loads, 6 broadcasts,
// 12 FMAs), then the distances ||c||^2 - 2 x.c are folded into each point's running
// (distance, index) per lane. Lanes see their centroids in increasing order and keep the
// first strict minimum; the final reduction over lanes takes the lowest index among equal
// distances, so ties go to the lower index as in the portable code.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <utility>

#include "kernels/centroid_blocks.h"
#include "kernels/simd_avx2.h"

namespace pqkv::kernels::avx2 {
namespace {

constexpr int kPoints = 6;
constexpr int kBlock = 16;

struct Best {
  __m256 value;
  __m256i index;
};

template <int P>
inline void Block(const float* const* x, int dim, const float* block, const float* norms, int c0,
                  Best* best) {
  __m256 lo[P], hi[P];
  for (int p = 0; p < P; ++p) lo[p] = hi[p] = _mm256_setzero_ps();
  for (int i = 0; i < dim; ++i) {
    const __m256 c_lo = _mm256_loadu_ps(block + i * kBlock);
    const __m256 c_hi = _mm256_loadu_ps(block + i * kBlock + 8);
    for (int p = 0; p < P; ++p) {
      const __m256 xv = _mm256_broadcast_ss(x[p] + i);
      lo[p] = _mm256_fmadd_ps(xv, c_lo, lo[p]);
      hi[p] = _mm256_fmadd_ps(xv, c_hi, hi[p]);
    }
  }
  const __m256 minus2 = _mm256_set1_ps(-2.0f);
  const __m256 n_lo = _mm256_loadu_ps(norms + c0), n_hi = _mm256_loadu_ps(norms + c0 + 8);
  const __m256i i_lo =
      _mm256_add_epi32(_mm256_set1_epi32(c0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i i_hi = _mm256_add_epi32(i_lo, _mm256_set1_epi32(8));
  for (int p = 0; p < P; ++p) {
    const __m256 d_lo = _mm256_fmadd_ps(lo[p], minus2, n_lo);
    __m256 lt = _mm256_cmp_ps(d_lo, best[p].value, _CMP_LT_OQ);
    best[p].value = _mm256_blendv_ps(best[p].value, d_lo, lt);
    best[p].index = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(best[p].index), _mm256_castsi256_ps(i_lo), lt));
    const __m256 d_hi = _mm256_fmadd_ps(hi[p], minus2, n_hi);
    lt = _mm256_cmp_ps(d_hi, best[p].value, _CMP_LT_OQ);
    best[p].value = _mm256_blendv_ps(best[p].value, d_hi, lt);
    best[p].index = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(best[p].index), _mm256_castsi256_ps(i_hi), lt));
  }
}

template <int P>
void Group(const float* points, size_t stride, int dim, const CentroidBlocks& centroids,
           uint32_t* assign, float* distances) {
  const float* x[P];
  for (int p = 0; p < P; ++p) x[p] = points + p * stride;
  Best best[P];
  for (int p = 0; p < P; ++p) {
    best[p].value = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    best[p].index = _mm256_setzero_si256();
  }
  for (int b = 0; b < centroids.num_blocks; ++b) {
    Block<P>(x, dim, centroids.blocks.data() + static_cast<size_t>(b) * dim * kBlock,
             centroids.norms.data(), b * kBlock, best);
  }
  // Per point: the smallest distance over the lanes, then the lowest index among the lanes
  // that hold it, branch-free (a scalar loop mispredicts on every new minimum).
  for (int p = 0; p < P; ++p) {
    __m256 v =
        _mm256_min_ps(best[p].value, _mm256_permute2f128_ps(best[p].value, best[p].value, 1));
    v = _mm256_min_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm256_min_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    const __m256i at_min = _mm256_castps_si256(_mm256_cmp_ps(best[p].value, v, _CMP_EQ_OQ));
    __m256i c = _mm256_or_si256(best[p].index, _mm256_andnot_si256(at_min, _mm256_set1_epi32(-1)));
    c = _mm256_min_epu32(c, _mm256_permute2x128_si256(c, c, 1));
    c = _mm256_min_epu32(c, _mm256_shuffle_epi32(c, _MM_SHUFFLE(1, 0, 3, 2)));
    c = _mm256_min_epu32(c, _mm256_shuffle_epi32(c, _MM_SHUFFLE(2, 3, 0, 1)));
    assign[p] = static_cast<uint32_t>(_mm256_cvtsi256_si32(c));
    if (distances != nullptr) distances[p] = _mm256_cvtss_f32(v);
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

}  // namespace pqkv::kernels::avx2

// AVX2 shortlist pass of the radix select: ordered keys, compare, and compaction of the
// survivors through a permutation table. Compiled with -mavx2 -mfma.
#include <immintrin.h>

#include <array>
#include <cstring>

#include "kernels/ordered_key.h"
#include "kernels/simd_avx2.h"

namespace pqkv::kernels::avx2 {
namespace {

// For each 8-bit mask, the lanes whose bit is set, packed to the front.
std::array<std::array<int32_t, 8>, 256> MakeCompressTable() {
  std::array<std::array<int32_t, 8>, 256> table{};
  for (int mask = 0; mask < 256; ++mask) {
    int out = 0;
    for (int lane = 0; lane < 8; ++lane) {
      if (mask & (1 << lane)) table[mask][out++] = lane;
    }
  }
  return table;
}
const std::array<std::array<int32_t, 8>, 256> kCompress = MakeCompressTable();

}  // namespace

size_t ShortlistKeys(const float* scores, uint32_t begin, uint32_t end, uint32_t cut,
                     uint32_t* keys, uint32_t* positions) {
  const __m256i sign = _mm256_set1_epi32(static_cast<int32_t>(0x80000000u));
  // Unsigned key >= cut, as a signed compare with both sign bits flipped.
  const __m256i cut_signed = _mm256_set1_epi32(static_cast<int32_t>(cut ^ 0x80000000u));
  const __m256i step = _mm256_set1_epi32(8);
  __m256i position = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  position = _mm256_add_epi32(position, _mm256_set1_epi32(static_cast<int32_t>(begin)));
  size_t count = 0;
  uint32_t t = begin;
  for (; t + 8 <= end; t += 8) {
    // + 0.0f turns -0 into +0, so that equal scores share a key.
    const __m256 x = _mm256_add_ps(_mm256_loadu_ps(scores + t), _mm256_setzero_ps());
    const __m256i u = _mm256_castps_si256(x);
    const __m256i flip = _mm256_or_si256(_mm256_srai_epi32(u, 31), sign);
    const __m256i key = _mm256_xor_si256(u, flip);
    const __m256i below = _mm256_cmpgt_epi32(cut_signed, _mm256_xor_si256(key, sign));
    const int keep = ~_mm256_movemask_ps(_mm256_castsi256_ps(below)) & 0xff;
    // Branch-free: the stores always happen, and count only moves past the survivors.
    const __m256i order =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kCompress[keep].data()));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(keys + count),
                        _mm256_permutevar8x32_epi32(key, order));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(positions + count),
                        _mm256_permutevar8x32_epi32(position, order));
    count += __builtin_popcount(keep);
    position = _mm256_add_epi32(position, step);
  }
  for (; t < end; ++t) {
    const uint32_t key = OrderedKey(scores[t]);
    if (key >= cut) {
      keys[count] = key;
      positions[count++] = t;
    }
  }
  return count;
}

}  // namespace pqkv::kernels::avx2

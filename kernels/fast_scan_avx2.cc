// AVX2 4-bit fast scan: vpshufb table lookups over 32-token blocks, uint16 sums.
// Compiled with -mavx2 -mfma.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/simd_avx2.h"

namespace pqkv::kernels::avx2 {
namespace {

constexpr int kTablesPerPass = 4;  // 8 accumulators stay in registers

// Writes the 32 token sums of one table from the two accumulators:
// acc_all lanes hold sum(even + 256 * odd) mod 2^16, acc_odd lanes sum(odd).
inline void StoreSums(__m256i acc_all, __m256i acc_odd, uint16_t* dst) {
  const __m256i even = _mm256_sub_epi16(acc_all, _mm256_slli_epi16(acc_odd, 8));
  const __m256i lo = _mm256_unpacklo_epi16(even, acc_odd);  // tokens 0-7 | 16-23
  const __m256i hi = _mm256_unpackhi_epi16(even, acc_odd);  // tokens 8-15 | 24-31
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permute2x128_si256(lo, hi, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16),
                      _mm256_permute2x128_si256(lo, hi, 0x31));
}

}  // namespace

void FastScanAccumulate(const uint8_t* blocks, size_t num_blocks, int subspaces,
                        const uint8_t* tables, int num_tables, uint16_t* out, size_t out_stride) {
  const int pairs = subspaces / 2;
  const size_t block_bytes = 16 * static_cast<size_t>(subspaces);
  // Each 16-entry table replicated into both 128-bit lanes, as vpshufb looks up per lane.
  std::vector<__m256i> replicated(static_cast<size_t>(num_tables) * subspaces);
  for (int g = 0; g < num_tables; ++g) {
    for (int m = 0; m < subspaces; ++m) {
      const __m128i t = _mm_loadu_si128(
          reinterpret_cast<const __m128i*>(tables + (static_cast<size_t>(g) * subspaces + m) * 16));
      replicated[static_cast<size_t>(g) * subspaces + m] = _mm256_broadcastsi128_si256(t);
    }
  }
  const __m256i low_nibble = _mm256_set1_epi8(0x0f);
  for (int g0 = 0; g0 < num_tables; g0 += kTablesPerPass) {
    const int count = std::min(kTablesPerPass, num_tables - g0);
    const __m256i* tab = replicated.data() + static_cast<size_t>(g0) * subspaces;
    for (size_t b = 0; b < num_blocks; ++b) {
      const uint8_t* block = blocks + b * block_bytes;
      __m256i all[kTablesPerPass], odd[kTablesPerPass];
      for (int g = 0; g < kTablesPerPass; ++g) all[g] = odd[g] = _mm256_setzero_si256();
      for (int p = 0; p < pairs; ++p) {
        const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + p * 32));
        const __m256i lo = _mm256_and_si256(bytes, low_nibble);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low_nibble);
        for (int g = 0; g < count; ++g) {
          const __m256i r_lo = _mm256_shuffle_epi8(tab[g * subspaces + 2 * p], lo);
          const __m256i r_hi = _mm256_shuffle_epi8(tab[g * subspaces + 2 * p + 1], hi);
          all[g] = _mm256_add_epi16(all[g], _mm256_add_epi16(r_lo, r_hi));
          odd[g] = _mm256_add_epi16(
              odd[g], _mm256_add_epi16(_mm256_srli_epi16(r_lo, 8), _mm256_srli_epi16(r_hi, 8)));
        }
      }
      for (int g = 0; g < count; ++g) {
        StoreSums(all[g], odd[g], out + (g0 + g) * out_stride + b * 32);
      }
    }
  }
}

}  // namespace pqkv::kernels::avx2

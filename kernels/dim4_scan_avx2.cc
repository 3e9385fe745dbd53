// AVX2 Dim4Dots (kernels/dim4_scan.h), for CPUs without AVX-512 VNNI; compiled with -mavx2.
//
// Each 32-byte half of a 64-byte group is 8 tokens x 4 dimensions per nibble. vpmaddubsw
// multiplies the unsigned codes by the int8 weights and adds neighbouring pairs into int16
// (at most 2 x 15 x 127 each, so low plus high nibble fits); vpmaddwd by ones adds the
// pairs into each token's int32 lane.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/simd_avx2.h"

namespace pqkv::kernels::avx2 {
namespace {

// The layout of kernels/dim4_scan.h: blocks of 16 tokens, 8 x head_dim bytes each.
constexpr size_t kBlockTokens = 16;
// As in the AVX-512 kernel: each group's line four blocks ahead, asked for early.
constexpr size_t kPrefetchBlocks = 4;

inline __m256i Broadcast4(const int8_t* w) {
  int32_t word;
  std::memcpy(&word, w, sizeof(word));
  return _mm256_set1_epi32(word);
}

template <int kQueries>
void DotsForQueries(const uint8_t* blocks, size_t num_blocks, int head_dim, const int8_t* weights,
                    int32_t* out, size_t out_stride) {
  const size_t block_bytes = size_t{8} * head_dim;
  const int groups = head_dim / 8;
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (size_t blk = 0; blk < num_blocks; ++blk) {
    const uint8_t* block = blocks + blk * block_bytes;
    __m256i sum[kQueries][2];
    for (int g = 0; g < kQueries; ++g) sum[g][0] = sum[g][1] = _mm256_setzero_si256();
    for (int j = 0; j < groups; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(block + kPrefetchBlocks * block_bytes + j * 64),
                   _MM_HINT_T0);
      for (int half = 0; half < 2; ++half) {
        const __m256i v = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(block + static_cast<size_t>(j) * 64 + 32 * half));
        const __m256i low = _mm256_and_si256(v, nibble);
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
        for (int g = 0; g < kQueries; ++g) {
          const int8_t* w = weights + static_cast<size_t>(g) * head_dim + 8 * j;
          const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(low, Broadcast4(w)),
                                                 _mm256_maddubs_epi16(high, Broadcast4(w + 4)));
          sum[g][half] = _mm256_add_epi32(sum[g][half], _mm256_madd_epi16(pairs, ones));
        }
      }
    }
    for (int g = 0; g < kQueries; ++g) {
      int32_t* dst = out + g * out_stride + blk * kBlockTokens;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), sum[g][0]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8), sum[g][1]);
    }
  }
}

}  // namespace

void Dim4Dots(const uint8_t* blocks, size_t num_blocks, int head_dim, const int8_t* weights,
              int num_queries, int32_t* out, size_t out_stride) {
  for (int g = 0; g < num_queries; g += 4) {
    const int8_t* w = weights + static_cast<size_t>(g) * head_dim;
    int32_t* o = out + g * out_stride;
    switch (num_queries - g) {
      case 1:
        DotsForQueries<1>(blocks, num_blocks, head_dim, w, o, out_stride);
        break;
      case 2:
        DotsForQueries<2>(blocks, num_blocks, head_dim, w, o, out_stride);
        break;
      case 3:
        DotsForQueries<3>(blocks, num_blocks, head_dim, w, o, out_stride);
        break;
      default:
        DotsForQueries<4>(blocks, num_blocks, head_dim, w, o, out_stride);
        break;
    }
  }
}

}  // namespace pqkv::kernels::avx2

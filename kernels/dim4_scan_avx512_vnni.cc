// AVX-512 VNNI Dim4Dots (kernels/dim4_scan.h); compiled with -mavx512bw -mavx512vnni.
//
// One 64-byte load is 16 tokens x 4 dimensions per nibble; vpdpbusd multiplies those
// unsigned codes by the query's 4 int8 weights (broadcast) and adds each token's 4
// products into its int32 lane. Up to four query heads share each load; low and high
// nibbles accumulate apart so that no head waits on its own vpdpbusd latency.
#include <immintrin.h>

#include <cstdint>

#include "kernels/simd_avx512_vnni.h"

namespace pqkv::kernels::avx512_vnni {
namespace {

// The layout of kernels/dim4_scan.h: blocks of 16 tokens, 8 x head_dim bytes each.
constexpr size_t kBlockTokens = 16;
// Codes are read once per step from DRAM; the hardware prefetcher stops at 4 KB pages, so
// each group's line four blocks ahead (4 KB at d = 128) is asked for early: 0.75-0.84x the
// cold scan time here (docs/benchmarks.md). A prefetch past the end never faults.
constexpr size_t kPrefetchBlocks = 4;

// acc += vpdpbusd(x, the 4 int8 weights at w broadcast to every lane), the broadcast
// folded into the instruction ({1to16}). Inline assembly because GCC 12 compiles
// _mm512_dpbusd_epi32 in this loop with a separate vpbroadcastd per product and two
// register copies per accumulator; this form takes 0.87x the time (bench/kernel_bench,
// docs/benchmarks.md).
inline void DpbusdBroadcast(__m512i& acc, __m512i x, const int8_t* w) {
  asm("vpdpbusd %[w]%{1to16%}, %[x], %[acc]"
      : [acc] "+v"(acc)
      : [x] "v"(x), [w] "m"(*reinterpret_cast<const int32_t*>(w)));
}

template <int kQueries>
void DotsForQueries(const uint8_t* blocks, size_t num_blocks, int head_dim, const int8_t* weights,
                    int32_t* out, size_t out_stride) {
  const size_t block_bytes = size_t{8} * head_dim;
  const int groups = head_dim / 8;
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  for (size_t blk = 0; blk < num_blocks; ++blk) {
    const uint8_t* block = blocks + blk * block_bytes;
    __m512i low_sum[kQueries], high_sum[kQueries];
    for (int g = 0; g < kQueries; ++g) low_sum[g] = high_sum[g] = _mm512_setzero_si512();
    for (int j = 0; j < groups; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(block + kPrefetchBlocks * block_bytes + j * 64),
                   _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(block + static_cast<size_t>(j) * 64);
      const __m512i low = _mm512_and_si512(v, nibble);
      const __m512i high = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      for (int g = 0; g < kQueries; ++g) {
        const int8_t* w = weights + static_cast<size_t>(g) * head_dim + 8 * j;
        DpbusdBroadcast(low_sum[g], low, w);
        DpbusdBroadcast(high_sum[g], high, w + 4);
      }
    }
    for (int g = 0; g < kQueries; ++g) {
      _mm512_storeu_si512(out + g * out_stride + blk * kBlockTokens,
                          _mm512_add_epi32(low_sum[g], high_sum[g]));
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

}  // namespace pqkv::kernels::avx512_vnni

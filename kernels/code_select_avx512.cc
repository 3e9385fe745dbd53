// AVX-512 pass of SelectTopKByCode's winners in position order (kernels/code_select.cc):
// sixteen tokens a step, their code scores gathered and compared with the threshold as
// ordered keys, the winners' positions and scores compressed into place. With the scalar
// pass (a load chain of code, standing and score per token) a re-rank's select of 8192
// candidates took twice the plain 2x6 select (retrieval_bench stage_us.select 920-974
// against 462-520 us on the Intel Xeon of docs/benchmarks.md); with this one, as long
// (473-586). Compiled with -mavx512f -mavx512vl.
#include <immintrin.h>

#include <cstdint>

#include "kernels/simd_avx512.h"

namespace pqkv::kernels::avx512 {
namespace {

// OrderedKey (kernels/ordered_key.h) of 16 floats: -0 as +0, then negatives' bits
// inverted and positives' sign bit set.
inline __m512i OrderedKeys(__m512 scores) {
  const __mmask16 zero = _mm512_cmp_ps_mask(scores, _mm512_setzero_ps(), _CMP_EQ_OQ);
  const __m512i bits = _mm512_maskz_mov_epi32(static_cast<__mmask16>(~zero),
                                              _mm512_castps_si512(scores));
  const __mmask16 negative = _mm512_cmplt_epi32_mask(bits, _mm512_setzero_si512());
  return _mm512_mask_xor_epi32(_mm512_or_si512(bits, _mm512_set1_epi32(INT32_MIN)), negative,
                               bits, _mm512_set1_epi32(-1));
}

// The lowest `count` set bits of `mask`.
inline __mmask16 LowestBits(__mmask16 mask, uint32_t count) {
  uint32_t bits = mask, kept = 0;
  for (uint32_t i = 0; i < count && bits != 0; ++i) {
    kept |= bits & (0u - bits);
    bits &= bits - 1;
  }
  return static_cast<__mmask16>(kept);
}

}  // namespace

uint32_t CodeWinnersInOrder(const uint16_t* joined, const float* code_scores, uint32_t begin,
                            uint32_t blocks, uint32_t threshold, uint32_t need, uint32_t k,
                            uint32_t* tied, uint32_t* positions_out, float* scores_out) {
  const __m512i vthreshold = _mm512_set1_epi32(static_cast<int>(threshold));
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  uint32_t taken = 0;
  for (uint32_t b = 0; b < blocks && taken < k; ++b) {
    const uint32_t t = begin + 16 * b;
    const __m512i codes =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(joined + t)));
    const __m512 scores = _mm512_i32gather_ps(codes, code_scores, 4);
    const __m512i keys = OrderedKeys(scores);
    __mmask16 win = _mm512_cmpgt_epu32_mask(keys, vthreshold);
    const __mmask16 equal = _mm512_cmpeq_epi32_mask(keys, vthreshold);
    if (equal != 0) {  // the first `need` tokens equal to the threshold win
      const uint32_t ties = static_cast<uint32_t>(__builtin_popcount(equal));
      win |= *tied + ties <= need ? equal : LowestBits(equal, need > *tied ? need - *tied : 0);
      *tied += ties;
    }
    const uint32_t count = static_cast<uint32_t>(__builtin_popcount(win));
    const __mmask16 first = static_cast<__mmask16>((1u << count) - 1);
    const __m512i positions = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(t)), lanes);
    _mm512_mask_storeu_epi32(positions_out + taken, first,
                             _mm512_maskz_compress_epi32(win, positions));
    if (scores_out != nullptr) {
      _mm512_mask_storeu_ps(scores_out + taken, first, _mm512_maskz_compress_ps(win, scores));
    }
    taken += count;
  }
  return taken;
}

}  // namespace pqkv::kernels::avx512

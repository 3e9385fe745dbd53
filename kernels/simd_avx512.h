// Declarations of the AVX-512 kernels, defined in *_avx512.cc files compiled with
// -mavx512f -mavx512vl. Call them only when UseAvx512() is true; the public headers dispatch.
#ifndef PQKV_KERNELS_SIMD_AVX512_H_
#define PQKV_KERNELS_SIMD_AVX512_H_

#include <cstddef>
#include <cstdint>

namespace pqkv::kernels::avx512 {

// See RowDots in row_dots.h: fp16 rows when `fp16`, else fp32; head_dim % 16 == 0.
void RowDots(bool fp16, const void* const* rows, size_t n, int head_dim, const float* queries,
             int group, float* out);
// See ExpAndSum, ExpAndSumInt32 and MaxOfInt32 in vector_exp.h.
double ExpAndSum(const float* x, size_t n, float scale, float shift, float* out);
double ExpAndSumInt32(const int32_t* x, size_t n, float scale, float shift, float* out);
int32_t MaxOfInt32(const int32_t* x, size_t n);
// SelectTopKByCode's winners in position order (code_select.cc) over the encoded tokens
// [begin, begin + 16 x blocks): a token wins when OrderedKey(code_scores[joined[t]]) is
// above `threshold`, or equal while fewer than `need` equal ones came before (*tied
// counts those seen, carried in and out). Writes the winners' positions (and scores, when
// scores_out is not null) in order, stops after the block that reaches k winners, and
// returns how many it wrote.
uint32_t CodeWinnersInOrder(const uint16_t* joined, const float* code_scores, uint32_t begin,
                            uint32_t blocks, uint32_t threshold, uint32_t need, uint32_t k,
                            uint32_t* tied, uint32_t* positions_out, float* scores_out);
// See AssignNearest in kmeans.h.
void AssignNearest(const float* points, size_t n, int dim, size_t stride, const float* centroids,
                   const float* c_norms, int k, uint32_t* assign, float* distances);

}  // namespace pqkv::kernels::avx512

#endif  // PQKV_KERNELS_SIMD_AVX512_H_

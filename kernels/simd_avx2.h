// Declarations of the AVX2 kernels, defined in *_avx2.cc files compiled with -mavx2
// -mfma. Call them only when UseAvx2() is true; the public headers dispatch.
#ifndef PQKV_KERNELS_SIMD_AVX2_H_
#define PQKV_KERNELS_SIMD_AVX2_H_

#include <cstddef>
#include <cstdint>

namespace pqkv::kernels::avx2 {

double ExpAndSum(const float* x, size_t n, float scale, float shift, float* out);
float MaxOf(const float* x, size_t n);
int32_t MaxOfInt32(const int32_t* x, size_t n);
void AddScaled(const float* x, size_t n, float scale, float* out);
double ExpAndSumInt32(const int32_t* x, size_t n, float scale, float shift, float* out);
// Radix select's shortlist (radix_select.cc): for t in [begin, end) whose ordered key is
// >= cut, appends the key and t to keys/positions (which need 8 slots of slack); returns
// how many were appended.
size_t ShortlistKeys(const float* scores, uint32_t begin, uint32_t end, uint32_t cut,
                     uint32_t* keys, uint32_t* positions);
// See AssignNearest in kmeans.h.
void AssignNearest(const float* points, size_t n, int dim, size_t stride, const float* centroids,
                   const float* c_norms, int k, uint32_t* assign, float* distances);
// See ExpAndSumGrouped in vector_exp.h; requires 8 % group == 0.
void ExpAndSumGrouped(const float* x, size_t count, int group, float scale, const float* shifts,
                      float* out, double* sums);

// See RowDots in row_dots.h: fp16 rows when `fp16`, else fp32; head_dim % 8 == 0.
// Needs F16C besides AVX2 (every AVX2 CPU has it).
void RowDots(bool fp16, const void* const* rows, size_t n, int head_dim, const float* queries,
             int group, float* out);

// See FastScanAccumulate in fast_scan.h.
void FastScanAccumulate(const uint8_t* blocks, size_t num_blocks, int subspaces,
                        const uint8_t* tables, int num_tables, uint16_t* out, size_t out_stride);

// ToFloat (dtype_convert.h) for fp16: n halves at src (little-endian) to fp32. Needs F16C.
void HalfsToFloats(const void* src, size_t n, float* dst);
// See Dim4Dots in dim4_scan.h.
void Dim4Dots(const uint8_t* blocks, size_t num_blocks, int head_dim, const int8_t* weights,
              int num_queries, int32_t* out, size_t out_stride);

}  // namespace pqkv::kernels::avx2

#endif  // PQKV_KERNELS_SIMD_AVX2_H_

// Vectorised exponentials for softmax: out[i] = exp(scale * x[i] - shift).
//
// AVX-512 or AVX2 where available (the same Cephes-style polynomial, relative error about
// 2e-7, results for arguments below -87 flush towards 0; ExpAndSumGrouped and MaxOf stay
// AVX2), std::exp otherwise. Pure, thread-safe.
#ifndef PQKV_KERNELS_VECTOR_EXP_H_
#define PQKV_KERNELS_VECTOR_EXP_H_

#include <cstddef>
#include <cstdint>

namespace pqkv::kernels {

// Writes out[i] = exp(scale * x[i] - shift) for i in [0, n) and returns their sum.
// `out` may equal `x`.
double ExpAndSum(const float* x, size_t n, float scale, float shift, float* out);

// The same with the portable code, whatever the CPU; the SIMD versions' test oracle.
double ExpAndSumPortable(const float* x, size_t n, float scale, float shift, float* out);

// ExpAndSum of integers (the dim4 scan's dot products), converted to float first.
double ExpAndSumInt32(const int32_t* x, size_t n, float scale, float shift, float* out);

// Interleaved groups: x holds `count` rows of `group` values ([row][group]). Writes
// out[r * group + g] = exp(scale * x[r * group + g] - shifts[g]) and adds each column's
// sum to sums[g]. `out` may equal `x`. AVX2 when 8 % group == 0.
void ExpAndSumGrouped(const float* x, size_t count, int group, float scale, const float* shifts,
                      float* out, double* sums);

// Largest of x[0, n); -inf for n == 0.
float MaxOf(const float* x, size_t n);

// Largest of x[0, n); INT32_MIN for n == 0.
int32_t MaxOfInt32(const int32_t* x, size_t n);

// out[i] += x[i] * scale for i in [0, n): a softmax's weighted exponentials summed into
// scores (RerankExact). AVX2 where available, as one fused multiply-add (the portable
// code rounds the product first: the last bit may differ).
void AddScaled(const float* x, size_t n, float scale, float* out);

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_VECTOR_EXP_H_

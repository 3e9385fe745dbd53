// Conversions between the K/V storage types (fp16, bf16, fp32) and fp32.
//
// Pure functions, thread-safe. Portable scalar code, but for ToFloat's fp16 loop, which
// runs on F16C where the CPU has AVX2 (dtype_convert_avx2.cc; the same bits).
#ifndef PQKV_KERNELS_DTYPE_CONVERT_H_
#define PQKV_KERNELS_DTYPE_CONVERT_H_

#include <cstddef>
#include <cstdint>

namespace pqkv::kernels {

enum class ElementType { kFp16, kBf16, kFp32 };

// Bytes per element of `type`.
size_t ElementBytes(ElementType type);

float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);  // round to nearest even
float Bf16ToFloat(uint16_t b);
uint16_t FloatToBf16(float f);  // round to nearest even

// Converts `n` elements of `type` at `src` (little-endian bytes) to fp32 at `dst`.
void ToFloat(ElementType type, const void* src, size_t n, float* dst);

// True when all `n` elements of `type` at `src` are finite.
bool AllFinite(ElementType type, const void* src, size_t n);

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_DTYPE_CONVERT_H_

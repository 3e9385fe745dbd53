// F16C fp16 -> fp32 conversion (kernels/dtype_convert.h's ToFloat); compiled with -mavx2
// -mf16c. vcvtph2ps is exact for every half (subnormals, infinities and NaNs included), so
// it gives the bits the portable HalfToFloat gives; it is 10-20x faster on the index
// build's 4M keys per kv head (docs/benchmarks.md, "Index build").
#include <immintrin.h>

#include <cstring>

#include "kernels/simd_avx2.h"

namespace pqkv::kernels::avx2 {

void HalfsToFloats(const void* src, size_t n, float* dst) {
  const auto* bytes = static_cast<const unsigned char*>(src);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  if (i < n) {  // the last 1-7 through a zero-padded block
    unsigned char tail[16] = {};
    std::memcpy(tail, bytes + 2 * i, 2 * (n - i));
    alignas(32) float out[8];
    _mm256_store_ps(out, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tail))));
    std::memcpy(dst + i, out, (n - i) * sizeof(float));
  }
}

}  // namespace pqkv::kernels::avx2

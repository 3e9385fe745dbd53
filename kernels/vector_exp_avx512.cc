// AVX-512 exponential and max (kernels/vector_exp.h): the AVX2 kernels of
// vector_exp_avx2.cc at 16 lanes, the same Cephes expf polynomial, so each exponential has
// the AVX2 kernel's bits (sums differ by their order of addition). The per-dimension scan
// takes four exponentials per token (docs/benchmarks.md). Compiled with -mavx512f.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/simd_avx512.h"

namespace pqkv::kernels::avx512 {
namespace {

inline __m512 Exp(__m512 x) {
  const __m512 max_arg = _mm512_set1_ps(88.3762626647949f);
  const __m512 min_arg = _mm512_set1_ps(-87.3365447504f);
  x = _mm512_min_ps(_mm512_max_ps(x, min_arg), max_arg);
  // x = n * ln2 + r, |r| <= ln2 / 2.
  const __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  // Multiply by 2^n through the exponent bits.
  const __m512i n =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(n));
}

// The exponentials and their sum of x[0, n), whose elements Load16 (16 at a time) and
// LoadOne turn into floats: shared by the float and the int32 inputs.
template <typename T, typename Load16, typename LoadOne>
double ExpAndSumOf(const T* x, size_t n, float scale, float shift, float* out, Load16 load16,
                   LoadOne load_one) {
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 vshift = _mm512_set1_ps(shift);
  __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 e0 = Exp(_mm512_fmsub_ps(load16(x + i), vscale, vshift));
    const __m512 e1 = Exp(_mm512_fmsub_ps(load16(x + i + 16), vscale, vshift));
    _mm512_storeu_ps(out + i, e0);
    _mm512_storeu_ps(out + i + 16, e1);
    sum0 = _mm512_add_ps(sum0, e0);
    sum1 = _mm512_add_ps(sum1, e1);
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(sum0, sum1));
  double sum = 0;
  for (float lane : lanes) sum += lane;
  for (; i < n; ++i) {
    out[i] = std::exp(scale * load_one(x[i]) - shift);
    sum += out[i];
  }
  return sum;
}

}  // namespace

double ExpAndSum(const float* x, size_t n, float scale, float shift, float* out) {
  return ExpAndSumOf(
      x, n, scale, shift, out, [](const float* p) { return _mm512_loadu_ps(p); },
      [](float v) { return v; });
}

double ExpAndSumInt32(const int32_t* x, size_t n, float scale, float shift, float* out) {
  return ExpAndSumOf(
      x, n, scale, shift, out,
      [](const int32_t* p) { return _mm512_cvtepi32_ps(_mm512_loadu_si512(p)); },
      [](int32_t v) { return static_cast<float>(v); });
}

int32_t MaxOfInt32(const int32_t* x, size_t n) {
  __m512i m0 = _mm512_set1_epi32(std::numeric_limits<int32_t>::min()), m1 = m0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm512_max_epi32(m0, _mm512_loadu_si512(x + i));
    m1 = _mm512_max_epi32(m1, _mm512_loadu_si512(x + i + 16));
  }
  int32_t max = _mm512_reduce_max_epi32(_mm512_max_epi32(m0, m1));
  for (; i < n; ++i) max = std::max(max, x[i]);
  return max;
}

}  // namespace pqkv::kernels::avx512

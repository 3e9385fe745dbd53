// AVX2 exponential (Cephes expf polynomial) and max. Compiled with -mavx2 -mfma.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/simd_avx2.h"

namespace pqkv::kernels::avx2 {
namespace {

inline __m256 Exp(__m256 x) {
  const __m256 max_arg = _mm256_set1_ps(88.3762626647949f);
  const __m256 min_arg = _mm256_set1_ps(-87.3365447504f);
  x = _mm256_min_ps(_mm256_max_ps(x, min_arg), max_arg);
  // x = n * ln2 + r, |r| <= ln2 / 2.
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // Multiply by 2^n through the exponent bits.
  const __m256i n =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

// The exponentials and their sum of x[0, n), whose elements Load8 (8 at a time) and
// LoadOne turn into floats: shared by the float and the int32 inputs.
template <typename T, typename Load8, typename LoadOne>
double ExpAndSumOf(const T* x, size_t n, float scale, float shift, float* out, Load8 load8,
                   LoadOne load_one) {
  const __m256 vscale = _mm256_set1_ps(scale);
  const __m256 vshift = _mm256_set1_ps(shift);
  __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 e0 = Exp(_mm256_fmsub_ps(load8(x + i), vscale, vshift));
    const __m256 e1 = Exp(_mm256_fmsub_ps(load8(x + i + 8), vscale, vshift));
    _mm256_storeu_ps(out + i, e0);
    _mm256_storeu_ps(out + i + 8, e1);
    sum0 = _mm256_add_ps(sum0, e0);
    sum1 = _mm256_add_ps(sum1, e1);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(sum0, sum1));
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
      x, n, scale, shift, out, [](const float* p) { return _mm256_loadu_ps(p); },
      [](float v) { return v; });
}

double ExpAndSumInt32(const int32_t* x, size_t n, float scale, float shift, float* out) {
  return ExpAndSumOf(
      x, n, scale, shift, out,
      [](const int32_t* p) {
        return _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      },
      [](int32_t v) { return static_cast<float>(v); });
}

void ExpAndSumGrouped(const float* x, size_t count, int group, float scale, const float* shifts,
                      float* out, double* sums) {
  // Lane i of a 256-bit vector always holds column i % group, as 8 % group == 0.
  alignas(32) float lane_shift[8];
  for (int i = 0; i < 8; ++i) lane_shift[i] = shifts[i % group];
  const __m256 vscale = _mm256_set1_ps(scale);
  const __m256 vshift = _mm256_load_ps(lane_shift);
  const size_t n = count * group;
  __m256 acc = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = Exp(_mm256_fmsub_ps(_mm256_loadu_ps(x + i), vscale, vshift));
    _mm256_storeu_ps(out + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  for (int l = 0; l < 8; ++l) sums[l % group] += lanes[l];
  for (; i < n; ++i) {
    out[i] = std::exp(scale * x[i] - shifts[i % group]);
    sums[i % group] += out[i];
  }
}

float MaxOf(const float* x, size_t n) {
  __m256 m0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  float max = *std::max_element(lanes, lanes + 8);
  for (; i < n; ++i) max = std::max(max, x[i]);
  return max;
}

void AddScaled(const float* x, size_t n, float scale, float* out) {
  const __m256 s = _mm256_set1_ps(scale);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(_mm256_loadu_ps(x + i), s, _mm256_loadu_ps(out + i)));
  }
  for (; i < n; ++i) out[i] += x[i] * scale;
}

int32_t MaxOfInt32(const int32_t* x, size_t n) {
  __m256i m0 = _mm256_set1_epi32(std::numeric_limits<int32_t>::min()), m1 = m0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_epi32(m0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    m1 = _mm256_max_epi32(m1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 8)));
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_max_epi32(m0, m1));
  int32_t max = *std::max_element(lanes, lanes + 8);
  for (; i < n; ++i) max = std::max(max, x[i]);
  return max;
}

}  // namespace pqkv::kernels::avx2

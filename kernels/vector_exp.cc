#include "kernels/vector_exp.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu_features.h"
#include "kernels/simd_avx2.h"
#include "kernels/simd_avx512.h"

namespace pqkv::kernels {

double ExpAndSumPortable(const float* x, size_t n, float scale, float shift, float* out) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    out[i] = std::exp(scale * x[i] - shift);
    sum += out[i];
  }
  return sum;
}

double ExpAndSum(const float* x, size_t n, float scale, float shift, float* out) {
  if (UseAvx512()) return avx512::ExpAndSum(x, n, scale, shift, out);
  if (UseAvx2()) return avx2::ExpAndSum(x, n, scale, shift, out);
  return ExpAndSumPortable(x, n, scale, shift, out);
}

double ExpAndSumInt32(const int32_t* x, size_t n, float scale, float shift, float* out) {
  if (UseAvx512()) return avx512::ExpAndSumInt32(x, n, scale, shift, out);
  if (UseAvx2()) return avx2::ExpAndSumInt32(x, n, scale, shift, out);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    out[i] = std::exp(scale * static_cast<float>(x[i]) - shift);
    sum += out[i];
  }
  return sum;
}

void ExpAndSumGrouped(const float* x, size_t count, int group, float scale, const float* shifts,
                      float* out, double* sums) {
  if (UseAvx2() && 8 % group == 0) {
    avx2::ExpAndSumGrouped(x, count, group, scale, shifts, out, sums);
    return;
  }
  for (size_t r = 0; r < count; ++r) {
    for (int g = 0; g < group; ++g) {
      const size_t i = r * group + g;
      out[i] = std::exp(scale * x[i] - shifts[g]);
      sums[g] += out[i];
    }
  }
}

float MaxOf(const float* x, size_t n) {
  if (UseAvx2()) return avx2::MaxOf(x, n);
  float max = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < n; ++i) max = std::max(max, x[i]);
  return max;
}

void AddScaled(const float* x, size_t n, float scale, float* out) {
  if (UseAvx2()) {
    avx2::AddScaled(x, n, scale, out);
    return;
  }
  for (size_t i = 0; i < n; ++i) out[i] += x[i] * scale;
}

int32_t MaxOfInt32(const int32_t* x, size_t n) {
  if (UseAvx512()) return avx512::MaxOfInt32(x, n);
  if (UseAvx2()) return avx2::MaxOfInt32(x, n);
  int32_t max = std::numeric_limits<int32_t>::min();
  for (size_t i = 0; i < n; ++i) max = std::max(max, x[i]);
  return max;
}

}  // namespace pqkv::kernels

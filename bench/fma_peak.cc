#include "bench/fma_peak.h"

#include <immintrin.h>

#include "kernels/cpu_features.h"

namespace pqkv::bench {
namespace {

// Latency 4 x two FMA ports is 8 chains, but 8 ran 20% short of peak on the Intel Xeon
// of docs/benchmarks.md (5.9 against 7.3 G vector FMAs a second); 12 reach it.
constexpr int kChains = 12;

__attribute__((target("avx512f"))) float Loop512(size_t steps) {
  __m512 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm512_set1_ps(static_cast<float>(j));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
  for (size_t i = 0; i < steps; i += kChains) {
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  __m512 sum = acc[0];
  for (int j = 1; j < kChains; ++j) sum = _mm512_add_ps(sum, acc[j]);
  return _mm512_reduce_add_ps(sum);
}

__attribute__((target("avx2,fma"))) float Loop256(size_t steps) {
  __m256 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm256_set1_ps(static_cast<float>(j));
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
  for (size_t i = 0; i < steps; i += kChains) {
    for (int j = 0; j < kChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  __m256 sum = acc[0];
  for (int j = 1; j < kChains; ++j) sum = _mm256_add_ps(sum, acc[j]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) total += lane;
  return total;
}

float LoopScalar(size_t steps) {
  float acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = static_cast<float>(j);
  for (size_t i = 0; i < steps; i += kChains) {
    for (int j = 0; j < kChains; ++j) acc[j] = acc[j] * 0.999f + 1e-3f;
  }
  float total = 0;
  for (float a : acc) total += a;
  return total;
}

}  // namespace

int FmaPeakLanes() {
  if (kernels::UseAvx512()) return 16;
  if (kernels::UseAvx2()) return 8;
  return 1;
}

float FmaPeakLoop(size_t multiply_adds) {
  const int lanes = FmaPeakLanes();
  const size_t steps = (multiply_adds + lanes - 1) / lanes;
  if (lanes == 16) return Loop512(steps);
  if (lanes == 8) return Loop256(steps);
  return LoopScalar(steps);
}

}  // namespace pqkv::bench

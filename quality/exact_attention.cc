#include "quality/exact_attention.h"

#include <algorithm>
#include <cmath>

#include "kernels/pq_scan.h"

namespace pqkv::quality {

HeadAttention ComputeHeadAttention(const float* keys, const float* values, uint32_t num_keys,
                                   const float* group_queries, uint32_t group_size,
                                   uint32_t head_dim) {
  HeadAttention out;
  out.num_keys = num_keys;
  out.probs.resize(group_size);
  out.output.assign(group_size, std::vector<double>(head_dim, 0.0));
  out.gqa_score.assign(num_keys, 0.0f);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  for (uint32_t g = 0; g < group_size; ++g) {
    std::vector<float>& p = out.probs[g];
    p.resize(num_keys);
    kernels::ExactScores(group_queries + static_cast<size_t>(g) * head_dim, keys, num_keys,
                         static_cast<int>(head_dim), p.data());
    const float max_logit = *std::max_element(p.begin(), p.end());
    double sum = 0;
    for (float& x : p) {
      x = static_cast<float>(std::exp((static_cast<double>(x) - max_logit) * scale));
      sum += x;
    }
    std::vector<double>& o = out.output[g];
    for (uint32_t t = 0; t < num_keys; ++t) {
      p[t] = static_cast<float>(p[t] / sum);
      out.gqa_score[t] += p[t];
      const float* v = values + static_cast<size_t>(t) * head_dim;
      for (uint32_t i = 0; i < head_dim; ++i) o[i] += static_cast<double>(p[t]) * v[i];
    }
  }
  return out;
}

std::vector<double> AttendOver(const float* keys, const float* values, uint32_t n,
                               const float* query, uint32_t head_dim) {
  const HeadAttention a = ComputeHeadAttention(keys, values, n, query, 1, head_dim);
  return a.output[0];
}

}  // namespace pqkv::quality

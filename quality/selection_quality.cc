#include "quality/selection_quality.h"

#include <algorithm>
#include <cmath>

#include "workload/planted_kv.h"

namespace pqkv::quality {

SelectionQuality MeasureSelection(const HeadAttention& attention, const float* values,
                                  uint32_t head_dim, uint32_t sinks, uint32_t recent_begin,
                                  const std::vector<uint32_t>& selected,
                                  const std::vector<uint32_t>& oracle) {
  const uint32_t n = attention.num_keys;
  std::vector<uint32_t> set;
  set.reserve(sinks + selected.size() + (n - recent_begin));
  for (uint32_t t = 0; t < std::min(sinks, n); ++t) set.push_back(t);
  set.insert(set.end(), selected.begin(), selected.end());
  for (uint32_t t = recent_begin; t < n; ++t) set.push_back(t);
  std::sort(set.begin(), set.end());
  set.erase(std::unique(set.begin(), set.end()), set.end());

  SelectionQuality q;
  q.recall_at_k = workload::Recall(selected, oracle);

  const size_t group = attention.probs.size();
  std::vector<double> o_set(head_dim);
  for (size_t g = 0; g < group; ++g) {
    const std::vector<float>& p = attention.probs[g];
    double mass = 0;
    std::fill(o_set.begin(), o_set.end(), 0.0);
    for (uint32_t t : set) {
      mass += p[t];
      const float* v = values + static_cast<size_t>(t) * head_dim;
      for (uint32_t i = 0; i < head_dim; ++i) o_set[i] += static_cast<double>(p[t]) * v[i];
    }
    double diff = 0, norm = 0;
    for (uint32_t i = 0; i < head_dim; ++i) {
      const double full = attention.output[g][i];
      const double d = (mass > 0 ? o_set[i] / mass : 0.0) - full;
      diff += d * d;
      norm += full * full;
    }
    q.mass_recall += mass;
    q.output_rel_error += norm > 0 ? std::sqrt(diff / norm) : 0.0;
  }
  q.mass_recall /= static_cast<double>(group);
  q.output_rel_error /= static_cast<double>(group);
  return q;
}

}  // namespace pqkv::quality

#include "server/exact_rerank.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/time/clock.h"
#include "kernels/dtype_convert.h"
#include "kernels/pq_scan.h"

namespace pqkv::server {

HeadSelection RerankExact(const HeadKeys& keys, const float* group_queries, int group_size,
                          uint32_t candidate_begin, uint32_t candidate_end,
                          const HeadSelection& candidates, uint32_t k) {
  const absl::Time start = absl::Now();
  const int dim = keys.head_dim;
  const size_t c = candidates.positions.size();
  // Rows scored exactly: the candidates first, then sinks and the recent window.
  std::vector<uint32_t> rows(candidates.positions.begin(), candidates.positions.end());
  for (uint32_t t = 0; t < candidate_begin; ++t) rows.push_back(t);
  for (size_t t = candidate_end; t < keys.num_tokens; ++t) rows.push_back(static_cast<uint32_t>(t));
  std::vector<float> exact(rows.size() * dim);
  for (size_t i = 0; i < rows.size(); ++i) {
    kernels::ToFloat(keys.dtype, keys.rows->Row(rows[i]), dim, exact.data() + i * dim);
  }

  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  std::vector<float> logits(rows.size());
  std::vector<double> score(c, 0.0);
  bool finite = true;
  for (int g = 0; g < group_size; ++g) {
    kernels::ExactScores(group_queries + static_cast<size_t>(g) * dim, exact.data(), rows.size(),
                         dim, logits.data());
    const float max_logit = *std::max_element(logits.begin(), logits.end());
    double z = 0;
    for (float& x : logits) {
      x = std::exp((x - max_logit) * scale);
      z += x;
    }
    finite = finite && std::isfinite(z) && std::isfinite(max_logit);
    for (size_t i = 0; i < c; ++i) score[i] += logits[i] / z;
  }
  HeadSelection out;
  if (!finite) {
    out.overflow = true;
    return out;
  }
  std::vector<uint32_t> order(c);
  std::iota(order.begin(), order.end(), 0);
  // Best first; ties to the lower position, as the scan's select does.
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](uint32_t a, uint32_t b) {
    return score[a] != score[b] ? score[a] > score[b]
                                : candidates.positions[a] < candidates.positions[b];
  });
  out.positions.reserve(k);
  out.scores.reserve(k);
  for (uint32_t i = 0; i < k; ++i) {
    out.positions.push_back(candidates.positions[order[i]]);
    out.scores.push_back(static_cast<float>(score[order[i]]));
  }
  out.scan_us = candidates.scan_us;
  out.select_us = candidates.select_us + absl::ToDoubleMicroseconds(absl::Now() - start);
  return out;
}

}  // namespace pqkv::server

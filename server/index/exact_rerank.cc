#include "server/index/exact_rerank.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/time/clock.h"
#include "kernels/radix_select.h"
#include "kernels/row_dots.h"
#include "kernels/vector_exp.h"

namespace pqkv::server {

HeadSelection RerankExact(const HeadKeys& keys, const float* group_queries, int group_size,
                          uint32_t candidate_begin, uint32_t candidate_end,
                          const HeadSelection& candidates, uint32_t k) {
  const absl::Time start = absl::Now();
  const size_t c = candidates.positions.size();
  // The candidates in position order, so the rows are read front to back.
  std::vector<uint32_t> positions = candidates.positions;
  std::sort(positions.begin(), positions.end());
  // Rows scored exactly, read in place: the candidates first, then sinks and the recent
  // window (for the normalisers).
  std::vector<const void*> rows;
  rows.reserve(c + candidate_begin + (keys.num_tokens - candidate_end));
  for (uint32_t p : positions) rows.push_back(keys.rows->Row(p));
  for (uint32_t t = 0; t < candidate_begin; ++t) rows.push_back(keys.rows->Row(t));
  for (size_t t = candidate_end; t < keys.num_tokens; ++t) rows.push_back(keys.rows->Row(t));
  std::vector<float> logits(rows.size() * group_size);  // [group][row]
  kernels::RowDots(keys.dtype, rows.data(), rows.size(), keys.head_dim, group_queries, group_size,
                   logits.data());

  const float scale = 1.0f / std::sqrt(static_cast<float>(keys.head_dim));
  std::vector<float> score(c, 0.0f);
  HeadSelection out;
  for (int g = 0; g < group_size; ++g) {
    float* head = logits.data() + static_cast<size_t>(g) * rows.size();
    const float max_logit = kernels::MaxOf(head, rows.size());
    const double z = kernels::ExpAndSum(head, rows.size(), scale, max_logit * scale, head);
    if (!std::isfinite(max_logit) || !std::isfinite(z)) {
      out.overflow = true;
      return out;
    }
    const float inverse_z = static_cast<float>(1.0 / z);
    for (size_t i = 0; i < c; ++i) score[i] += head[i] * inverse_z;
  }
  // Best first; ties to the lower index, which is the lower position (sorted above).
  std::vector<uint32_t> order(k);
  kernels::SelectTopK(score.data(), 0, static_cast<uint32_t>(c), k, order.data());
  out.positions.reserve(k);
  out.scores.reserve(k);
  for (uint32_t i = 0; i < k; ++i) {
    out.positions.push_back(positions[order[i]]);
    out.scores.push_back(score[order[i]]);
  }
  out.scan_us = candidates.scan_us;
  out.select_us = candidates.select_us + absl::ToDoubleMicroseconds(absl::Now() - start);
  return out;
}

}  // namespace pqkv::server

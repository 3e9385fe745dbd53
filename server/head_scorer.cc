#include "server/head_scorer.h"

#include <cmath>

#include "kernels/gqa_softmax.h"
#include "kernels/pq_scan.h"
#include "kernels/top_k.h"

namespace pqkv {

HeadSelection ScoreAndSelect(const HeadKeys& keys, const float* group_queries, int group_size,
                             uint32_t candidate_begin, uint32_t candidate_end, uint32_t k) {
  const size_t n = keys.num_tokens;
  const int dim = keys.head_dim;
  const size_t encoded = keys.codebook ? keys.num_encoded : 0;
  const size_t exact = n - encoded;

  // Tokens without codes are converted to fp32 once per kv head, not per query head.
  std::vector<float> exact_keys(exact * dim);
  for (size_t t = 0; t < exact; ++t) {
    kernels::ToFloat(keys.dtype, keys.rows->Row(encoded + t), dim, exact_keys.data() + t * dim);
  }

  std::vector<float> table;
  if (keys.codebook) {
    const kernels::PqShape& shape = keys.codebook->shape();
    table.resize(static_cast<size_t>(shape.subspaces) * shape.centroids_per_subspace);
  }
  std::vector<float> logits(n);
  std::vector<float> combined(n, 0.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  for (int g = 0; g < group_size; ++g) {
    const float* query = group_queries + static_cast<size_t>(g) * dim;
    if (encoded > 0) {
      const kernels::PqShape& shape = keys.codebook->shape();
      kernels::ComputeInnerProductTable(shape, query, keys.codebook->centroids().data(),
                                        table.data());
      kernels::AdcScan(shape, table.data(), keys.codes, encoded, logits.data());
    }
    kernels::ExactScores(query, exact_keys.data(), exact, dim, logits.data() + encoded);
    kernels::AccumulateSoftmax(logits.data(), n, scale, combined.data());
  }

  HeadSelection selection;
  selection.positions.resize(k);
  kernels::TopK(combined.data(), candidate_begin, candidate_end, k, selection.positions.data());
  selection.scores.reserve(k);
  for (uint32_t position : selection.positions) selection.scores.push_back(combined[position]);
  return selection;
}

}  // namespace pqkv

// ExactAttention: full fp32 attention of one decode query over one kv head's keys, the
// reference every selection is measured against (docs/quality.md).
//
// For each query head g of the kv head's group: p_g = softmax(q_g . k / sqrt(d)) over
// keys [0, position] (the query's own key included, as in a decode step) and the output
// o_g = sum_i p_g[i] v_i. The GQA score of token i is sum_g p_g[i], PQCache's combination
// (the server ranks by the same quantity, from PQ codes).
//
// Pure computation; safe to call from several threads on different outputs.
#ifndef PQKV_QUALITY_EXACT_ATTENTION_H_
#define PQKV_QUALITY_EXACT_ATTENTION_H_

#include <cstdint>
#include <vector>

namespace pqkv::quality {

struct HeadAttention {
  uint32_t num_keys = 0;                    // position + 1
  std::vector<std::vector<float>> probs;    // [group][num_keys]
  std::vector<std::vector<double>> output;  // [group][head_dim]
  std::vector<float> gqa_score;             // [num_keys]
};

// keys, values: fp32 [num_keys][head_dim] (a kv head's rows); group_queries: fp32
// [group_size][head_dim].
HeadAttention ComputeHeadAttention(const float* keys, const float* values, uint32_t num_keys,
                                   const float* group_queries, uint32_t group_size,
                                   uint32_t head_dim);

// What a worker computes over the rows it holds: softmax(q . k / sqrt(d)) over `n`
// keys, applied to their values. keys, values: fp32 [n][head_dim]; returns [head_dim].
std::vector<double> AttendOver(const float* keys, const float* values, uint32_t n,
                               const float* query, uint32_t head_dim);

}  // namespace pqkv::quality

#endif  // PQKV_QUALITY_EXACT_ATTENTION_H_

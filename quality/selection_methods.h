// The selections pqkv is compared with, for one kv head and one decode query. Each picks
// k positions among the candidates [begin, end): the tokens the worker does not keep
// (it keeps the first S sinks and the recent window itself).
//
// - oracle: the exact top-k of the GQA score (what PQ approximates; its upper bound).
// - streaming (StreamingLLM): no search, the recent window grown by k: [end - k, end).
// - quest (Quest, Tang et al. 2024): 16-token pages with per-channel key min/max; a
//   page's bound for query q is sum_i max(q_i min_i, q_i max_i); the group's bounds are
//   combined like the GQA score (softmax over pages of bound / sqrt(d), summed over the
//   group's query heads); best pages first until k tokens (the last page cut).
// - random: k distinct candidates, uniformly.
//
// Pure functions; positions are returned ascending.
#ifndef PQKV_QUALITY_SELECTION_METHODS_H_
#define PQKV_QUALITY_SELECTION_METHODS_H_

#include <cstdint>
#include <vector>

namespace pqkv::quality {

// Requires 1 <= k <= end - begin for every method.
std::vector<uint32_t> OracleSelection(const std::vector<float>& gqa_score, uint32_t begin,
                                      uint32_t end, uint32_t k);
std::vector<uint32_t> StreamingSelection(uint32_t begin, uint32_t end, uint32_t k);
// keys: fp32 [token][head_dim] (at least `end` rows); group_queries: [group][head_dim].
std::vector<uint32_t> QuestSelection(const float* keys, const float* group_queries,
                                     uint32_t group_size, uint32_t head_dim, uint32_t begin,
                                     uint32_t end, uint32_t k, uint32_t page_tokens = 16);
std::vector<uint32_t> RandomSelection(uint32_t begin, uint32_t end, uint32_t k, uint64_t seed);

}  // namespace pqkv::quality

#endif  // PQKV_QUALITY_SELECTION_METHODS_H_

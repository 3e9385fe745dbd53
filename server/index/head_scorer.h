// ScoreAndSelect: PQCache's retrieval for one (layer, kv head). Per query head of the
// kv head's GQA group: approximate logits (PQ codes for encoded tokens, exact dot
// products for tokens not yet encoded), softmax(logit / sqrt(head_dim)) over all
// tokens, summed over the group; then top-k among the candidate positions.
//
// ScoreAndSelect runs the fast kernels (kernels/gqa_scoring.h, kernels/radix_select.h);
// ScoreAndSelectPlain the foundation's plain kernels, kept as the reference they are
// tested and benchmarked against. Thread-safe given that the inputs are not mutated
// during the call.
#ifndef PQKV_SERVER_INDEX_HEAD_SCORER_H_
#define PQKV_SERVER_INDEX_HEAD_SCORER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/dtype_convert.h"
#include "kernels/pq_code_store.h"
#include "kernels/radix_select.h"
#include "server/index/pq_codebook.h"
#include "server/memory/paged_rows.h"

namespace pqkv::server {

struct HeadSelection {
  std::vector<uint32_t> positions;  // best first
  std::vector<float> scores;        // GQA softmax-sum of each position
  bool overflow = false;            // a logit was not finite: positions mean nothing
  // Per query head of the group, log Z_g = log sum_t exp(logit_gt / sqrt(head_dim)) over
  // all tokens with the logits the scores came from (natural log); filled by
  // ScoreAndSelect, empty from the plain kernels and the GPU backend. RerankExact corrects
  // these instead of summing a normaliser over the re-ranked tokens only.
  std::vector<double> log_normalisers;
  // Time this head spent scoring (tables, scan, softmax) and selecting top-k,
  // microseconds; 0 where they are not measured apart (the GPU backend).
  double scan_us = 0;
  double select_us = 0;
  double rerank_us = 0;  // RerankExact's own time (its candidates' scan and select above)
};

// Everything ScoreAndSelect reads about one kv head's keys.
struct HeadKeys {
  const PagedRows* rows = nullptr;  // num_tokens key rows, [token][head_dim] in dtype
  size_t num_tokens = 0;
  kernels::ElementType dtype = kernels::ElementType::kFp16;
  int head_dim = 0;
  // Codebook and codes of tokens [0, codes->size()); both null: every token is exact.
  const PqCodebook* codebook = nullptr;
  const kernels::PqCodeStore* codes = nullptr;
};

// group_queries: fp32 [group_size][head_dim]. Candidates are [candidate_begin,
// candidate_end); requires 1 <= k <= candidate_end - candidate_begin <= num_tokens.
// `order`: positions best first, or in ascending position (RerankExact's candidates).
HeadSelection ScoreAndSelect(const HeadKeys& keys, const float* group_queries, int group_size,
                             uint32_t candidate_begin, uint32_t candidate_end, uint32_t k,
                             kernels::TopKOrder order = kernels::TopKOrder::kBestFirst);

HeadSelection ScoreAndSelectPlain(const HeadKeys& keys, const float* group_queries, int group_size,
                                  uint32_t candidate_begin, uint32_t candidate_end, uint32_t k);

// Exact scores of the key rows rows[0, n) (head_dim elements of dtype each, read in
// place): the GQA sum of softmax over all n, fp32 into scores[n]. False when a logit is
// not finite. The reference live quality sampling compares a selection with.
bool ScoreExactRows(const void* const* rows, size_t n, kernels::ElementType dtype, int head_dim,
                    const float* group_queries, int group_size, float* scores);

// ScoreAndSelect's log_normalisers alone (the same scan, no selection), for selections
// that carry none. Empty when a logit is not finite.
std::vector<double> LogNormalisers(const HeadKeys& keys, const float* group_queries,
                                   int group_size);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_INDEX_HEAD_SCORER_H_

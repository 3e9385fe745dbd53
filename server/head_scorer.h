// ScoreAndSelect: PQCache's retrieval for one (layer, kv head). Per query head of the
// kv head's GQA group: approximate logits (ADC over PQ codes for encoded tokens, exact
// dot products for tokens not yet encoded), softmax(logit / sqrt(head_dim)) over all
// tokens, summed over the group; then top-k among the candidate positions.
//
// This is the plain CPU path. Faster kernels replace the calls into kernels/ behind the
// same function. Thread-safe given that the inputs are not mutated during the call.
#ifndef PQKV_SERVER_HEAD_SCORER_H_
#define PQKV_SERVER_HEAD_SCORER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/dtype_convert.h"
#include "server/paged_rows.h"
#include "server/pq_codebook.h"

namespace pqkv {

struct HeadSelection {
  std::vector<uint32_t> positions;  // best first
  std::vector<float> scores;        // GQA softmax-sum of each position
};

// Everything ScoreAndSelect reads about one kv head's keys.
struct HeadKeys {
  const PagedRows* rows = nullptr;  // num_tokens key rows, [token][head_dim] in dtype
  size_t num_tokens = 0;
  kernels::ElementType dtype = kernels::ElementType::kFp16;
  int head_dim = 0;
  const PqCodebook* codebook = nullptr;  // null: every token is scored exactly
  const uint8_t* codes = nullptr;        // uint8 [num_encoded][M], tokens [0, num_encoded)
  size_t num_encoded = 0;
};

// group_queries: fp32 [group_size][head_dim]. Candidates are [candidate_begin,
// candidate_end); requires 1 <= k <= candidate_end - candidate_begin <= num_tokens.
HeadSelection ScoreAndSelect(const HeadKeys& keys, const float* group_queries, int group_size,
                             uint32_t candidate_begin, uint32_t candidate_end, uint32_t k);

}  // namespace pqkv

#endif  // PQKV_SERVER_HEAD_SCORER_H_

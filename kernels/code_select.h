// SelectTopKByCode: top-k for scores that depend only on a token's joined PQ code
// (PQCache's 2 x 6 bits: 4096 distinct codes), taken whole codes at a time: the k-th
// largest score comes from the codes' histogram, and best first the winners come from the
// store's per-code token lists (kernels/pq_code_store.h), so the cost follows the distinct
// codes and k, not the tokens; no score is written per token. In position order (a
// re-rank's candidates, a quarter of the tokens or more) one branch-free pass over the
// candidates' codes picks them, cheaper there than a cache miss per code list.
//
// Same result as SelectTopK (kernels/radix_select.h, its test oracle) over the scores
// score[t] = code_scores[joined_codes()[t]] for the encoded tokens t < codes->size(), and
// exact_scores[t - codes->size()] for the tokens after them: the k largest among
// positions [begin, end), best first (equal scores by lower position) or in ascending
// position. Scores must not be NaN.
//
// Thread-safe; per-thread scratch.
#ifndef PQKV_KERNELS_CODE_SELECT_H_
#define PQKV_KERNELS_CODE_SELECT_H_

#include <cstdint>

#include "kernels/pq_code_store.h"
#include "kernels/radix_select.h"

namespace pqkv::kernels {

struct CodeScores {
  const PqCodeStore* codes = nullptr;   // has_joined()
  const float* code_scores = nullptr;   // [codes->joined_size()]
  const float* exact_scores = nullptr;  // [num_tokens - codes->size()]
  uint32_t num_tokens = 0;

  float ScoreOf(uint32_t t) const {
    return t < codes->size() ? code_scores[codes->joined_codes()[t]]
                             : exact_scores[t - codes->size()];
  }
};

// Requires 1 <= k <= end - begin and end <= num_tokens. scores_out, when given, gets
// each position's score (k floats), read per code rather than per token where it can.
void SelectTopKByCode(const CodeScores& in, uint32_t begin, uint32_t end, uint32_t k,
                      uint32_t* positions_out, float* scores_out = nullptr,
                      TopKOrder order = TopKOrder::kBestFirst);

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_CODE_SELECT_H_

// Top-k selection in O(n) by radix select on the scores' bit patterns, then a stable
// radix sort of the k winners. Same contract as TopK in top_k.h (its test oracle):
// the k largest scores among positions [begin, end), best first, equal scores ordered
// by lower position. Scores must not be NaN.
//
// Portable code; thread-safe; allocates scratch proportional to k.
#ifndef PQKV_KERNELS_RADIX_SELECT_H_
#define PQKV_KERNELS_RADIX_SELECT_H_

#include <cstdint>

namespace pqkv::kernels {

// The order SelectTopK writes its k positions in: best first (the contract above), or
// ascending position (the same set, without the sort of the winners: for callers that
// re-rank the candidates and read their rows front to back).
enum class TopKOrder { kBestFirst, kPosition };

void SelectTopK(const float* scores, uint32_t begin, uint32_t end, uint32_t k,
                uint32_t* positions_out, TopKOrder order = TopKOrder::kBestFirst);

// Orders k positions best first by their keys, given as ~OrderedKey(score) (ascending
// is best first), both arrays permuted together; stable, so positions that come in
// ascending order keep equal scores by lower position. SelectTopK's last step, for
// selections made another way (kernels/code_select.h).
void SortBestFirst(uint32_t* positions, uint32_t* inverted_keys, uint32_t k);

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_RADIX_SELECT_H_

// How good one selection is for one kv head and decode query, against exact attention
// (the metrics of docs/quality.md, after ../shared/research/quality.md):
// - recall_at_k: |selected ∩ exact top-k of the GQA score| / k, over the candidates;
// - mass_recall: the softmax mass of everything the worker attends to (sinks, recent
//   window, selected), averaged over the group's query heads;
// - output_rel_error: ||o_S - o|| / ||o|| with o_S the attention output renormalised over
//   that set and o the full one, averaged over the group's query heads.
//
// Pure functions.
#ifndef PQKV_QUALITY_SELECTION_QUALITY_H_
#define PQKV_QUALITY_SELECTION_QUALITY_H_

#include <cstdint>
#include <vector>

#include "quality/exact_attention.h"

namespace pqkv::quality {

struct SelectionQuality {
  double recall_at_k = 0;
  double mass_recall = 0;
  double output_rel_error = 0;
};

// The worker's fixed part is [0, sinks) and [recent_begin, attention.num_keys);
// `selected` and `oracle` are candidate positions (duplicates of the fixed part count
// once). values: fp32 [num_keys][head_dim].
SelectionQuality MeasureSelection(const HeadAttention& attention, const float* values,
                                  uint32_t head_dim, uint32_t sinks, uint32_t recent_begin,
                                  const std::vector<uint32_t>& selected,
                                  const std::vector<uint32_t>& oracle);

}  // namespace pqkv::quality

#endif  // PQKV_QUALITY_SELECTION_QUALITY_H_

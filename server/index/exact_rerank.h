// RerankExact: the refinement step after a PQ scan (FAISS's IndexRefine idea, with the
// server's own stored keys). The scan picked rerank x k candidates by approximate score;
// this scores those exactly and keeps the best k.
//
// A candidate's exact score is the GQA sum over the group's query heads of
// exp(q . k / sqrt(d)) / Z, with each head's Z summed exactly over the candidates, the
// sinks [0, candidate_begin) and the recent window [candidate_end, n): the tokens that
// carry most of the mass, so Z is close to the full softmax normaliser and the ranking
// close to the exact one. Costs (rerank x k + S + W) x group_size dot products per kv head.
//
// Thread-safe given that the inputs are not mutated during the call.
#ifndef PQKV_SERVER_INDEX_EXACT_RERANK_H_
#define PQKV_SERVER_INDEX_EXACT_RERANK_H_

#include <cstdint>

#include "server/index/head_scorer.h"

namespace pqkv::server {

// group_queries: fp32 [group_size][head_dim], in the model's dimension order.
// `candidates` (from ScoreAndSelect) holds at least k positions in
// [candidate_begin, candidate_end). Returns k positions, best first, with their exact
// scores; scan_us is carried over, select_us grows by the time spent here.
HeadSelection RerankExact(const HeadKeys& keys, const float* group_queries, int group_size,
                          uint32_t candidate_begin, uint32_t candidate_end,
                          const HeadSelection& candidates, uint32_t k);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_INDEX_EXACT_RERANK_H_

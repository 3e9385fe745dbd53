// RerankExact: the refinement step after a PQ scan (FAISS's IndexRefine idea, with the
// server's own stored keys). The scan picked rerank x k candidates by approximate score;
// this scores those exactly and keeps the best k.
//
// A candidate's score is the GQA sum over the group's query heads of
// exp(q . k / sqrt(d)) / Z_g with its exact logit, and Z_g the softmax normaliser over
// all n tokens: exact terms for the re-ranked set R (the candidates, the sinks
// [0, candidate_begin) and the recent window [candidate_end, n)) and the scan's
// approximate terms for every other token. Z_g comes from the scan's own normaliser
// (HeadSelection::log_normalisers) with its terms for R swapped for exact ones, so it
// costs no second scan; R is most of the mass, so Z_g is close to the exact normaliser
// (before, Z_g summed R alone: scores too large by the mass outside R, up to 1e9x on a
// retrieval head). Costs (candidates + S + W) x group_size dot products and as many
// code lookups per kv head; a selection without log_normalisers (the GPU backend's, the
// plain kernels') costs one CPU scan more (LogNormalisers).
//
// Thread-safe given that the inputs are not mutated during the call.
#ifndef PQKV_SERVER_INDEX_EXACT_RERANK_H_
#define PQKV_SERVER_INDEX_EXACT_RERANK_H_

#include <cstdint>

#include "server/index/head_scorer.h"

namespace pqkv::server {

// group_queries: fp32 [group_size][head_dim], in the model's dimension order. `keys`
// are those the scan read, codebook and codes included. `candidates` (from
// ScoreAndSelect) holds at least k positions in [candidate_begin, candidate_end), best
// first or in position order. Returns k positions, best first, with their exact scores;
// scan_us and select_us are carried over, rerank_us is the time spent here.
HeadSelection RerankExact(const HeadKeys& keys, const float* group_queries, int group_size,
                          uint32_t candidate_begin, uint32_t candidate_end,
                          const HeadSelection& candidates, uint32_t k);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_INDEX_EXACT_RERANK_H_

// ScoreGqa: the fast per-kv-head scoring of PQCache's retrieval. For every token, the
// sum over the kv head's query heads of softmax(logit / sqrt(d)) over all tokens, where
// a token's logit comes from its PQ codes (encoded tokens) or from its raw key (the
// tokens after them that have no codes yet).
//
// Four scan paths, chosen by the code layout (ChooseScanPath):
//  - joined (M * bits <= 12, PQCache's M = 2 x 6 bits): a token's logit depends only on
//    its joined code, so tables, exponentials and normalisers are computed once per
//    distinct code (4096 for 12 bits) with the code histogram, and the scan is a single
//    table lookup per token. Same scores as the plain path up to float rounding.
//  - fast-scan (bits == 4, M even): uint8 tables, vpshufb lookups, uint16 sums, and one
//    exponential per distinct sum. Scores carry the tables' 8-bit quantisation error.
//  - dim4 (one sub-space per dimension, 4 bits: PqCodeStore's dim4 blocks): the codes
//    are levels of a uniform grid, so a logit is an integer dot product of the codes with
//    an int8 query (kernels/dim4_scan.h), then one exponential per token and query head.
//    Scores carry the int8 query's rounding.
//  - generic (other shapes, e.g. M = 4 x 8 bits): the group's tables interleaved so one
//    token's logits for all its query heads are M row additions, computed in L1-sized
//    chunks twice (online max and normaliser, then scores), vectorised exponentials.
//    Same scores as the plain path up to float rounding.
//
// Thread-safe; uses per-thread scratch memory, no locks.
#ifndef PQKV_KERNELS_GQA_SCORING_H_
#define PQKV_KERNELS_GQA_SCORING_H_

#include <cstddef>
#include <cstdint>

#include "kernels/pq_code_store.h"
#include "kernels/pq_scan.h"

namespace pqkv::kernels {

enum class ScanPath { kJoined, kFastScan, kDim4, kGeneric, kExactOnly };
const char* ScanPathName(ScanPath path);
// The path ScoreGqa takes for these codes (null: no codes, exact only).
ScanPath ChooseScanPath(const PqCodeStore* codes);

struct GqaScoringInput {
  int head_dim = 0;
  // Codebook fp32 [M][2^bits][head_dim / M] and the codes of tokens [0, codes->size());
  // both null when no token has codes.
  const float* centroids = nullptr;
  const PqCodeStore* codes = nullptr;
  // Raw keys of the tokens after the encoded ones, fp32 [num_exact][head_dim].
  const float* exact_keys = nullptr;
  size_t num_exact = 0;
  // The kv head's query heads, fp32 [group_size][head_dim].
  const float* group_queries = nullptr;
  int group_size = 0;
};

// Writes the score of every token, fp32 [codes->size() + num_exact], to `scores`.
// Returns false, with scores undefined, when a logit is not finite (finite queries and
// keys can still overflow fp32). With `log_normalisers` (double [group_size]) also writes
// each query head's log Z_g = log sum_t exp(logit_gt / sqrt(head_dim)) over all tokens,
// natural log, with the logits this path computes: score_t = sum_g exp(logit_gt /
// sqrt(head_dim) - log Z_g).
bool ScoreGqa(const GqaScoringInput& input, float* scores, double* log_normalisers = nullptr);

// ScoreGqa's joined path (ChooseScanPath(input.codes) == kJoined) without its pass over
// the tokens: the score of each distinct code, code_scores[codes->joined_size()] (token t
// < codes->size() scores code_scores[joined_codes()[t]]), and of the exact tail tokens,
// exact_scores[num_exact]; the same values ScoreGqa writes. For a top-k by code
// (kernels/code_select.h).
bool ScoreGqaJoined(const GqaScoringInput& input, float* code_scores, float* exact_scores,
                    double* log_normalisers = nullptr);

// The logits ScoreGqa's path computes for the encoded tokens `positions` (each below
// codes->size()), unscaled: out[g * count + i], fp32 [group_size][count]. The fast-scan
// path's are those of its quantised tables, the dim4 path's those of its int8 query; the
// others sum the float tables in the same order as the scan. Lets a caller take tokens
// out of ScoreGqa's normalisers (RerankExact).
void GqaCodeLogits(const GqaScoringInput& input, const uint32_t* positions, size_t count,
                   float* out);

// The scan's probability mass of the encoded tokens `positions` (distinct, each below
// codes->size()) per query head: mass[g] = sum_i exp(logit_gi / sqrt(head_dim) -
// log_normalisers[g]) with GqaCodeLogits' logits, double [group_size]; 0 for a head
// whose normaliser is not finite. The joined path sums over the tokens' code histogram,
// one exponential per distinct code instead of one per token and query head.
void GqaCodeMass(const GqaScoringInput& input, const uint32_t* positions, size_t count,
                 const double* log_normalisers, double* mass);

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_GQA_SCORING_H_

// GQA score combination after PQCache: the kv head's score of a token is the sum, over
// the query heads of its group, of softmax(logit / sqrt(head_dim)) taken over all tokens.
//
// Plain reference implementation; pure function, thread-safe.
#ifndef PQKV_KERNELS_GQA_SOFTMAX_H_
#define PQKV_KERNELS_GQA_SOFTMAX_H_

#include <cstddef>

namespace pqkv::kernels {

// acc[t] += exp(scale * logits[t] - max) / sum_u exp(scale * logits[u] - max), t in [0, n).
// logits: one query head's fp32 logits over n tokens. Numerically stable (max-shifted).
void AccumulateSoftmax(const float* logits, size_t n, float scale, float* acc);

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_GQA_SOFTMAX_H_

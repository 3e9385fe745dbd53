// GenerateDriftTrace: a long-generation decode trace whose keys leave the prefill's
// distribution, for the codebook refresh (LayerStore::RefreshIndex) to be judged on
// (bench/drift_bench, docs/quality.md "Codebooks that follow the generation").
//
// Per kv head, keys are drawn around cluster centres (a topic each) plus noise. The
// prefill's come from one set of centres. During decoding a growing share of the keys
// (`drift` x the decode step's fraction of the way, so up to `drift` at the last step)
// comes from a second set that the prefill never showed: centres shifted along a fixed
// direction, with two outlier channels `outlier_scale` x larger (a topic change and new
// outlier channels, as RetroInfer and ParisKV describe for long generations). Each decode
// query (one every `query_every` positions) looks for the topic of a recent decode token
// of the new kind, so the tokens that matter to it are decode tokens: those the prefill's
// codebooks were not trained on.
//
// No RoPE and no sinks: this isolates the mechanism; long_context_kv.h models the rest.
// Keys and values are rounded to fp16; queries are fp32. Deterministic for a seed.
#ifndef PQKV_WORKLOAD_DRIFT_KV_H_
#define PQKV_WORKLOAD_DRIFT_KV_H_

#include <cstdint>

#include "workload/kv_dataset.h"

namespace pqkv::workload {

struct DriftSpec {
  uint32_t num_layers = 2;
  uint32_t num_kv_heads = 4;
  uint32_t num_query_heads = 16;  // a multiple of num_kv_heads
  uint32_t head_dim = 64;         // >= 8
  uint32_t prefill_tokens = 4096;
  uint32_t decode_tokens = 4096;
  uint32_t query_every = 256;  // decode queries at prefill + query_every x i - 1, i >= 1
  double drift = 1.0;          // share of new-kind keys at the last decode step (0: none)
  uint32_t clusters = 64;      // topics per kind
  double shift = 3.0;          // how far the new kind's centres sit from the old
  double outlier_scale = 6.0;  // the new kind's two outlier channels, x their usual std
  double query_scale = 1.5;    // logit sharpness of the queries
  uint64_t seed = 1;
};

// A data set with spec.prefill_tokens + spec.decode_tokens positions, queries at the
// decode positions above, head_types empty.
KvDataSet GenerateDriftTrace(const DriftSpec& spec);

}  // namespace pqkv::workload

#endif  // PQKV_WORKLOAD_DRIFT_KV_H_

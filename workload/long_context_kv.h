// GenerateLongContext: a synthetic long-context decode trace (32K-128K tokens) whose keys,
// queries and attention carry the structure the literature reports for real LLMs, so
// retrieval methods can be judged on it without model weights. The calibration targets
// and their sources are in shared/research/quality.md (sections 0-2); each modelling
// choice in long_context_kv.cc names its source.
//
// Per kv head, pre-RoPE (channel layout HF rotate_half: RoPE pair i = dims (i, i + d/2),
// frequency theta^(-2i/d), so large i = low frequency):
//   key  = mean + low-rank semantic part (topic segments of hundreds of tokens)
//        + a constant positional pattern in the high-frequency pairs (the recency band)
//        + outlier channels: `outlier_pairs` low-frequency pairs with ~10x the std
//        + (sinks) a small-norm key along the head's sink direction, which lives in two
//          reserved low-frequency pairs where other keys have ~no energy
//        + (needles, retrieval heads only) a component along the head's needle direction.
//   RoPE is applied to keys at their positions. Decode queries (the last `num_queries`
//   positions) combine a large sink component, the positional pattern (so RoPE turns
//   it into a decay with distance), a semantic direction, the needle direction for
//   retrieval heads, and a fixed outlier-channel offset. The query magnitudes come from
//   per-head-type logit targets in logit units (a per-head temperature, quality.md 2.7),
//   jittered per head so that heads of one type differ as real heads do.
//
// Head types (`head_types` of each KvLayer) are drawn per kv head: the first
// `dense_layers` layers are diffuse (Quest keeps the first two layers dense); the
// remaining diffuse and retrieval heads are spread over the other layers by a seeded
// shuffle, retrieval heads never in a dense layer. Counts are rounded so that a shape
// with >= 3 kv heads in total has at least one head of each type.
//
// Needle positions are shared by all retrieval heads of the data set (the same
// "needle" tokens of the text), uniformly in [sink_tokens, num_tokens - 64 - num_queries).
//
// Keys and values are rounded to fp16; queries are fp32. Pure function of the spec:
// deterministic for a seed (independent of the thread count). Runs one thread per layer
// up to std::thread::hardware_concurrency().
#ifndef PQKV_WORKLOAD_LONG_CONTEXT_KV_H_
#define PQKV_WORKLOAD_LONG_CONTEXT_KV_H_

#include <cstdint>
#include <vector>

#include "workload/kv_dataset.h"

namespace pqkv::workload {

struct LongContextSpec {
  uint32_t num_layers = 8;
  uint32_t num_kv_heads = 8;
  uint32_t num_query_heads = 32;  // a multiple of num_kv_heads (GQA groups)
  uint32_t head_dim = 128;        // even, >= 32
  uint32_t num_tokens = 32768;    // positions with K/V, the decode positions included
  uint32_t num_queries = 16;      // decode queries at the last num_queries positions
  double rope_theta = 5e5;        // RoPE base: 1e4 (Llama-2, SmolLM2) or 5e5 (Llama-3)
  uint64_t seed = 1;

  // Head mix (fractions of all kv heads; the rest are streaming).
  double retrieval_fraction = 0.05;  // retrieval heads are 3-6% of heads
  double diffuse_fraction = 0.25;    // 20-30% diffuse / aggregation heads
  uint32_t dense_layers = 1;         // leading layers whose heads are all diffuse

  // Key structure.
  uint32_t outlier_pairs = 1;         // low-frequency RoPE pairs with large key std
  double outlier_std_ratio = 10.0;    // their std / the typical channel std
  uint32_t mean_topic_tokens = 300;   // mean topic-segment length (exponential)
  double topic_variance_share = 0.4;  // share of the semantic variance between topics
  double outlier_chunk_fraction = 0.003;  // 8-token chunks that break locality
  uint32_t needles = 4;               // needle tokens (retrieval heads)
  uint32_t sink_tokens = 4;           // leading tokens acting as attention sinks
};

// Fills every field of the KvDataSet (name "generated"), head_types included.
// Requires a valid spec (see the field comments; num_tokens >= 256 + num_queries);
// violations are checked with assert.
KvDataSet GenerateLongContext(const LongContextSpec& spec);

// The kv head types GenerateLongContext assigns, [layer][kv_head].
std::vector<std::vector<HeadType>> AssignHeadTypes(const LongContextSpec& spec);

}  // namespace pqkv::workload

#endif  // PQKV_WORKLOAD_LONG_CONTEXT_KV_H_

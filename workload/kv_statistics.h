// Validation statistics for any KvDataSet, generated (long_context_kv.h) or captured
// from a real model (kv_dataset_io.h), so the two can be printed side by side. The
// metrics follow shared/research/quality.md section 0.1 and 2 ("Validation of the
// generator").
//
// Attention is exact: for the query at position p, fp32 logits q.k/sqrt(d) over keys
// [0, p] (fp16 keys widened to fp32), softmax accumulated in double. A kv head's
// statistics average over its query heads and the data set's queries.
//
// Pure functions of the data; thread-safe. MeasureDataSet runs heads on several threads.
#ifndef PQKV_WORKLOAD_KV_STATISTICS_H_
#define PQKV_WORKLOAD_KV_STATISTICS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "workload/kv_dataset.h"

namespace pqkv::workload {

// Windows shared by every statistic: the attention sinks (positions [0, 4)) and the
// recent window (the 64 positions [p-63, p], sinks excluded when they overlap).
inline constexpr uint32_t kStatSinkTokens = 4;
inline constexpr uint32_t kStatRecentTokens = 64;
// The top-k budget: ceil((p+1) / 16) tokens in all, sinks and recent included; the rest
// of the budget is the exact GQA top-k (sum over the group's query heads of the
// softmax, as PQCache ranks) over the middle positions [4, p-63).
inline constexpr uint32_t kStatTopKBudgetDivisor = 16;

struct HeadAttentionStats {
  double sink_share = 0;     // mass on the first 4 tokens
  double recent_share = 0;   // mass on the last 64 positions up to p (sinks excluded)
  double entropy_nats = 0;   // entropy of the attention distribution
  double top2pct_share = 0;  // mass of the top ceil(2% of (p+1)) tokens
  uint32_t n90 = 0;          // tokens for 90% of the mass: median over (query head, query)
  double n90_mean = 0;       // the same, mean
  double topk_mass = 0;      // mass kept by sinks + recent + exact top-k at the 1/16 budget
  double context_tokens = 0;  // mean p+1 over the queries
};

// Attention statistics of one kv head. Requires layer_index < data.layers.size(),
// kv_head < data.num_kv_heads and at least one query.
HeadAttentionStats MeasureHeadAttention(const KvDataSet& data, size_t layer_index,
                                        uint32_t kv_head);

// Thresholds (quality.md 2.6; DuoAttention's streaming heads, "retrieval heads"):
//   streaming: sink_share + recent_share >= 0.9;
//   retrieval: otherwise, when n90 <= max(32, 0.5% of context_tokens) — a handful of
//              tokens outside sinks and recent carries the mass;
//   diffuse:   the rest (mass spread over many tokens; where top-k loses mass).
inline constexpr double kStreamingMass = 0.9;
inline constexpr uint32_t kRetrievalMinN90 = 32;
inline constexpr double kRetrievalN90Fraction = 0.005;
HeadType ClassifyHead(const HeadAttentionStats& stats);

// Key and query geometry of one kv head. Pre-RoPE keys are recovered by undoing HF
// rotate_half RoPE with data.rope_theta at each key's position. PCA, channel stds and
// Mahalanobis distances use an even subsample of at most 2048 tokens.
struct KeyStructureStats {
  double sink_norm_ratio = 0;    // ||k_0|| / median key norm
  double first4_norm_ratio = 0;  // mean ||k_1..k_3|| / median key norm
  // Per-channel std over tokens: the largest / the median, pre- and post-RoPE, and the
  // two largest channels pre-RoPE (dims; RoPE pair = dim mod head_dim/2).
  double channel_std_ratio_pre = 0;
  double channel_std_ratio_post = 0;
  uint32_t top_channels_pre[2] = {0, 0};
  bool top_channel_low_frequency = false;  // top pre-RoPE channel in the lowest-frequency
                                           // quarter of the pairs
  uint32_t rank90_pre = 0;   // principal components for 90% of the variance, pre-RoPE
  uint32_t rank90_post = 0;  // the same, post-RoPE
  // Locality (ShadowKV): mean cosine of post-RoPE keys to their 8-token chunk's mean,
  // the same for chunks of 8 random tokens, and mean cosine of adjacent / random pairs.
  double chunk_cosine = 0;
  double random_chunk_cosine = 0;
  double adjacent_pair_cosine = 0;
  double random_pair_cosine = 0;
  // Query vs key distribution (RetrievalAttention's OOD finding), post-RoPE:
  double mean_query_key_cosine = 0;  // cos(mean query of the group, mean key)
  // Mean Mahalanobis distance under the key distribution (covariance regularised by
  // 1% of its mean eigenvalue) of the group's queries, and of the keys themselves.
  double query_mahalanobis = 0;
  double key_mahalanobis = 0;
  // Share of the queries' energy (||q||^2) inside the span of the keys' top rank90_post
  // principal directions; centred keys have 0.9 there by construction.
  double query_energy_in_key_subspace = 0;
  // Queries' per-channel RMS: the largest / the median (massive Q values).
  double query_channel_rms_ratio = 0;
};

KeyStructureStats MeasureKeyStructure(const KvDataSet& data, size_t layer_index,
                                      uint32_t kv_head);

struct HeadReport {
  uint32_t layer = 0;  // KvLayer::layer
  uint32_t kv_head = 0;
  bool has_label = false;   // the data set says what the head is (generated data)
  HeadType label = HeadType::kStreaming;
  HeadType classified = HeadType::kStreaming;  // ClassifyHead(attention)
  HeadAttentionStats attention;
  KeyStructureStats keys;
};

// Every kv head of every layer; `threads` = 0 uses std::thread::hardware_concurrency().
std::vector<HeadReport> MeasureDataSet(const KvDataSet& data, uint32_t threads = 0);

// A readable text report: the data set's shape, key geometry (means and ranges over
// heads), per head type (by label where known, else by classification) the attention
// statistics and the 1/16-budget top-k mass, the label/classification agreement, and,
// with `per_head`, one line per head.
std::string FormatReport(const KvDataSet& data, const std::vector<HeadReport>& heads,
                         bool per_head);

}  // namespace pqkv::workload

#endif  // PQKV_WORKLOAD_KV_STATISTICS_H_

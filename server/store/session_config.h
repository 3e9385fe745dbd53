// SessionConfig: a session's model shape and index options, with PQCache's defaults and
// the validation every CreateSession goes through.
//
// Plain values; copy freely.
#ifndef PQKV_SERVER_STORE_SESSION_CONFIG_H_
#define PQKV_SERVER_STORE_SESSION_CONFIG_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/dtype_convert.h"

namespace pqkv::server {

struct ModelShape {
  uint32_t num_layers = 0;
  uint32_t num_kv_heads = 0;
  uint32_t num_query_heads = 0;
  uint32_t head_dim = 0;
  kernels::ElementType dtype = kernels::ElementType::kFp16;

  uint32_t group_size() const { return num_query_heads / num_kv_heads; }
  // Bytes of one token's K (or V) row for one kv head.
  size_t row_bytes() const { return head_dim * kernels::ElementBytes(dtype); }
};

// Re-ranking of a session whose IndexOptions leave it unset (except the per-dimension
// 4-bit index, which needs none: DefaultRerank), and the largest factor.
inline constexpr uint32_t kDefaultRerank = 4;
inline constexpr uint32_t kMaxRerank = 64;

// PQCache's choices: M = 2 sub-spaces, b = 6 bits, 32 sinks; 10 k-means iterations at most
// (training stops earlier once few assignments change: PqTrainOptions). The server's
// default for a CreateSession that names no index is DefaultIndexOptions below.
struct IndexOptions {
  uint32_t subspaces = 2;
  uint32_t bits = 6;
  uint32_t kmeans_iterations = 10;
  uint32_t sink_tokens = 32;
  uint32_t recent_window = 64;
  // Sub-spaces hold whole RoPE pairs (PqCodebook; docs/quality.md measures it).
  bool rope_pairs = false;
  // Exact re-ranking of rerank x k PQ candidates for Retrieve items that ask for none
  // (rerank 0); 1: off. docs/quality.md measures the default against the exact top-k.
  uint32_t rerank = kDefaultRerank;

  uint32_t centroids() const { return 1u << bits; }
  // Each sub-space is one dimension of the key: levels on a uniform grid (PqCodebook),
  // scanned by the dim4 kernel at 4 bits (kernels/dim4_scan.h).
  bool per_dimension(uint32_t head_dim) const { return subspaces == head_dim; }
  // Below this many prefill tokens a layer is scored exactly: a codebook trained on so
  // few keys is poor, and exact scoring of so few tokens is cheap.
  uint32_t min_training_tokens() const { return 4 * centroids(); }
};

// The index a CreateSession gets when it sets neither subspaces nor bits: one sub-space
// per dimension at 4 bits (levels on a uniform grid, scanned by kernels/dim4_scan.h, no
// re-rank), which comes within 0.2 points of the exact top-k's attention mass on real
// captures and reads no key rows (docs/quality.md, docs/benchmarks.md). Where head_dim is
// not a multiple of 8 (the dim4 layout's groups of dimensions), PQCache's 2 x 6 with
// re-rank kDefaultRerank.
IndexOptions DefaultIndexOptions(uint32_t head_dim);

// Re-ranking when a session leaves it unset: 1 (off) for the per-dimension 4-bit index,
// whose scan is already within a fraction of a point of the exact top-k; kDefaultRerank
// for every other index.
uint32_t DefaultRerank(const IndexOptions& index, uint32_t head_dim);

// When the server retrains a layer's codebooks during decoding (LayerStore::ClaimRefresh),
// once at least min_tokens were appended since the last training: the appended tokens'
// mean squared quantization error reaches drift_ratio x the training keys' (their
// distribution has moved), or the layer has grown by `growth` x the tokens trained on
// (codebooks trained on a shrinking share of the keys; growth 1 doubles, so retraining
// costs O(1) per appended token, amortised). Server-wide (--refresh_* flags).
// A retraining lands up to min_tokens tokens (and its training time) after the keys that
// call for it, and until then a drifted key's code says little about it: with re-ranking
// on, the latest exact_tail appended candidates always join the exact re-rank (prefill
// tokens never do, their codebooks were trained on them); 0 turns that off, as does
// enabled = false.
struct RefreshPolicy {
  bool enabled = true;
  double drift_ratio = 1.5;
  double growth = 1.0;
  uint32_t min_tokens = 256;
  uint32_t exact_tail = 512;
};

struct SessionConfig {
  ModelShape shape;
  IndexOptions index;
  RefreshPolicy refresh;  // set by the server, not the client
};

// Largest values accepted, to keep one session from asking for absurd allocations.
inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxHeads = 1024;
inline constexpr uint32_t kMaxHeadDim = 4096;
inline constexpr uint32_t kMaxKmeansIterations = 1000;
// Each (layer, kv head) carries its own paged tensors and codebook.
inline constexpr uint32_t kMaxLayerHeads = 1 << 16;

// INVALID_ARGUMENT naming the offending field, or OK. `page_bytes` is the arena's page
// size: one K/V row must fit in a page.
absl::Status ValidateSessionConfig(const SessionConfig& config, size_t page_bytes);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_STORE_SESSION_CONFIG_H_

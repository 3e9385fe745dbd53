// The quality harness: runs a decode trace (a KvDataSet) through pqkv and the
// comparison methods and reports recall@k, attention-mass recall and output error per
// head type (docs/quality.md).
//
// Per method, for each layer, decode query (at position p) and kv head: the worker keeps
// sinks [0, S) and the recent window [p - W, p]; the method picks k = budget x p of the
// candidates [S, p - W); the metrics of selection_quality.h compare that with exact
// attention over [0, p]. For pqkv the candidates are ranked by a real server: the
// prefill (positions before the first query) is uploaded per layer, and after each
// query its token's K/V is appended, as a worker would (so later queries also score
// tokens encoded with the prefill's codebooks). Results are averaged over queries and
// query heads per kv head, then over the kv heads of each head type.
//
// Runs on the calling thread (plus one helper thread per core for exact attention).
#ifndef PQKV_QUALITY_QUALITY_HARNESS_H_
#define PQKV_QUALITY_QUALITY_HARNESS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/pqkv_client.h"
#include "quality/selection_quality.h"
#include "workload/kv_dataset.h"

namespace pqkv::quality {

// One pqkv setting, written "MxB" plus optional "+pairs" (IndexOptions.rope_pairs) and
// "+rerankR" (RetrieveQuery.rerank; without it, none), e.g. "2x6", "4x8+pairs+rerank4";
// or "default": whatever the server's defaults are (index options and re-ranking unset).
struct PqConfig {
  bool server_default = false;
  uint32_t subspaces = 2;
  uint32_t bits = 6;
  bool rope_pairs = false;
  uint32_t rerank = 1;  // 1: off; 0: the session's (server_default)

  std::string Name() const;
};
absl::StatusOr<PqConfig> ParsePqConfig(absl::string_view text);

// Tokens a method selects at position p: budget x p, rounded, at least 1.
uint32_t BudgetTokens(double budget, uint32_t position);

// A session for `data` (fp16, one session layer per data-set layer) indexed with `pq`,
// with the worker's S sinks and W recent tokens; kmeans_iterations 0: the server's.
SessionOptions SessionFor(const workload::KvDataSet& data, const PqConfig& pq, uint32_t sinks,
                          uint32_t recent, uint32_t kmeans_iterations);

struct HarnessOptions {
  double budget = 0.0625;  // k = budget x p
  uint32_t sinks = 4;      // S
  uint32_t recent = 64;    // W
  // Any of "pqkv", "oracle", "streaming", "quest", "random".
  std::vector<std::string> methods = {"pqkv", "oracle", "streaming", "quest", "random"};
  std::vector<PqConfig> pq = {PqConfig{}};  // one pqkv run each
  uint32_t kmeans_iterations = 10;
  uint64_t seed = 7;  // random selection
  // Whether the query's own token p joins the attention it is measured against (as in
  // the model). false: attention over [0, p), the tokens the server held when it
  // answered, which is what the server's live quality sampler measures.
  bool include_query_token = true;
  // Whether each pqkv run closes its session at the end. false leaves them open, e.g. so
  // that the server's live quality sampler, which skips the items of closed sessions,
  // measures every one it drew.
  bool close_sessions = true;
  // Called with a line of progress (uploads, queries, layers evaluated); may be empty.
  std::function<void(const std::string&)> progress;
};

struct QualityRow {
  std::string method;     // "pqkv", "oracle", ...
  std::string pq;         // the PqConfig name for pqkv, else empty
  std::string head_type;  // "streaming", "retrieval", "diffuse" or "all"
  uint32_t heads = 0;     // kv heads averaged
  SelectionQuality quality;
  // pqkv, head type "all": median round trip of one layer's Retrieve (every kv head,
  // indices only), microseconds; 0 otherwise.
  double retrieve_median_us = 0;
  // pqkv: |returned score / exact score - 1| over every returned position, the exact
  // score being the GQA sum of softmax over the tokens the server held; mean and
  // largest. -1 for the other methods.
  double score_error_mean = -1;
  double score_error_max = -1;
};

struct HarnessReport {
  std::vector<QualityRow> rows;      // per method (and PQ setting) and head type, "all" first
  uint32_t k_first = 0, k_last = 0;  // k at the first and last query
  // Per head type: how many kv heads, and whether the type was classified from the
  // data's attention (captured data) or given (generated data).
  bool head_types_measured = false;
};

// client: a connected client for the pqkv method (null when methods omit it).
absl::StatusOr<HarnessReport> RunQualityHarness(const workload::KvDataSet& data, Client* client,
                                                const HarnessOptions& options);

}  // namespace pqkv::quality

#endif  // PQKV_QUALITY_QUALITY_HARNESS_H_

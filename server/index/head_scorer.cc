#include "server/index/head_scorer.h"

#include <cmath>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "kernels/code_select.h"
#include "kernels/gqa_scoring.h"
#include "kernels/gqa_softmax.h"
#include "kernels/pq_scan.h"
#include "kernels/radix_select.h"
#include "kernels/row_dots.h"
#include "kernels/top_k.h"
#include "kernels/vector_exp.h"

namespace pqkv::server {
namespace {

size_t NumEncoded(const HeadKeys& keys) { return keys.codes ? keys.codes->size() : 0; }

bool Permutes(const HeadKeys& keys) {
  return keys.codebook != nullptr && keys.codebook->permutes();
}

// Keys of the tokens without codes as fp32 [n - encoded][head_dim], in the codebook's
// dimension order (queries are reordered the same way, so dot products keep).
std::vector<float> ExactKeys(const HeadKeys& keys) {
  const size_t encoded = NumEncoded(keys);
  std::vector<float> out((keys.num_tokens - encoded) * keys.head_dim);
  std::vector<float> row(Permutes(keys) ? keys.head_dim : 0);
  for (size_t t = encoded; t < keys.num_tokens; ++t) {
    float* dst = out.data() + (t - encoded) * keys.head_dim;
    if (row.empty()) {
      kernels::ToFloat(keys.dtype, keys.rows->Row(t), keys.head_dim, dst);
    } else {
      kernels::ToFloat(keys.dtype, keys.rows->Row(t), keys.head_dim, row.data());
      keys.codebook->PermuteDims(row.data(), 1, dst);
    }
  }
  return out;
}

// The group's queries in the codebook's dimension order; `group_queries` itself when
// the codebook keeps the order.
const float* OrderedQueries(const HeadKeys& keys, const float* group_queries, int group_size,
                            std::vector<float>* storage) {
  if (!Permutes(keys)) return group_queries;
  storage->resize(static_cast<size_t>(group_size) * keys.head_dim);
  keys.codebook->PermuteDims(group_queries, group_size, storage->data());
  return storage->data();
}

HeadSelection Select(const std::vector<float>& scores, uint32_t begin, uint32_t end, uint32_t k,
                     bool plain, kernels::TopKOrder order = kernels::TopKOrder::kBestFirst) {
  HeadSelection selection;
  selection.positions.resize(k);
  if (plain) {
    kernels::TopK(scores.data(), begin, end, k, selection.positions.data());
  } else {
    kernels::SelectTopK(scores.data(), begin, end, k, selection.positions.data(), order);
  }
  selection.scores.reserve(k);
  for (uint32_t position : selection.positions) selection.scores.push_back(scores[position]);
  return selection;
}

// Per-thread scratch arrays are reused (fresh ones page-fault on every call); a call past
// this many tokens gives its memory back rather than keeping it for the thread.
constexpr size_t kKeepScratchTokens = size_t{1} << 17;

// Softmax over the logits of rows [0, n) per query head, summed over the group into
// scores[n]; each head's log normaliser into log_normalisers[group_size].
bool SoftmaxSumOfRows(const void* const* rows, size_t n, kernels::ElementType dtype, int head_dim,
                      const float* group_queries, int group_size, float* scores,
                      double* log_normalisers) {
  thread_local std::vector<float> logits;  // [group][token]
  struct Trim {
    size_t n;
    ~Trim() {
      if (n > kKeepScratchTokens) logits = {};
    }
  } trim{n};
  logits.resize(n * group_size);
  kernels::RowDots(dtype, rows, n, head_dim, group_queries, group_size, logits.data());
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int g = 0; g < group_size; ++g) {
    float* exps = logits.data() + static_cast<size_t>(g) * n;
    const float shift = scale * kernels::MaxOf(exps, n);
    if (!std::isfinite(shift)) return false;
    const double sum = kernels::ExpAndSum(exps, n, scale, shift, exps);
    log_normalisers[g] = shift + std::log(sum);
    const float inverse = static_cast<float>(1.0 / sum);
    if (g == 0) {
      for (size_t t = 0; t < n; ++t) scores[t] = exps[t] * inverse;
    } else {
      for (size_t t = 0; t < n; ++t) scores[t] += exps[t] * inverse;
    }
  }
  return true;
}

// ScoreAll for a head with no codes (its index still building, or too few tokens to
// train): the dot products read the stored rows in place. Converting them to fp32 first
// wrote 16 MiB per kv head at 32K tokens, which made a decode step that meets a build
// many times a warm one.
bool ScoreAllExact(const HeadKeys& keys, const float* group_queries, int group_size, float* scores,
                   double* log_normalisers) {
  thread_local std::vector<const void*> rows;
  const size_t n = keys.num_tokens;
  rows.resize(n);
  for (size_t t = 0; t < n; ++t) rows[t] = keys.rows->Row(t);
  const bool finite = SoftmaxSumOfRows(rows.data(), n, keys.dtype, keys.head_dim, group_queries,
                                       group_size, scores, log_normalisers);
  if (n > kKeepScratchTokens) rows = {};
  return finite;
}

// Runs kernels::ScoreGqa over every token into `scores` (at least num_tokens floats),
// with each query head's log normaliser into log_normalisers[group_size].
bool ScoreAll(const HeadKeys& keys, const float* group_queries, int group_size, float* scores,
              double* log_normalisers) {
  if (NumEncoded(keys) == 0 && !Permutes(keys)) {
    return ScoreAllExact(keys, group_queries, group_size, scores, log_normalisers);
  }
  std::vector<float> ordered;
  group_queries = OrderedQueries(keys, group_queries, group_size, &ordered);
  const std::vector<float> exact_keys = ExactKeys(keys);
  kernels::GqaScoringInput input;
  input.head_dim = keys.head_dim;
  if (keys.codes != nullptr && keys.codes->size() > 0) {
    input.centroids = keys.codebook->centroids().data();
    input.codes = keys.codes;
  }
  input.exact_keys = exact_keys.data();
  input.num_exact = keys.num_tokens - NumEncoded(keys);
  input.group_queries = group_queries;
  input.group_size = group_size;
  return kernels::ScoreGqa(input, scores, log_normalisers);
}

// Reused per thread: a fresh n-float array per head and call costs page faults.
std::vector<float>& ScoreScratch(size_t n) {
  thread_local std::vector<float> scores;
  if (scores.size() < n) scores.resize(n);
  return scores;
}

// ScoreAndSelect for PQCache's joined codes (2 x 6 bits): one score per distinct code,
// and the top-k taken whole codes at a time, with no pass over the tokens (same
// selection as scoring every token and selecting among them).
HeadSelection ScoreAndSelectByCode(const HeadKeys& keys, const float* group_queries, int group_size,
                                   uint32_t candidate_begin, uint32_t candidate_end, uint32_t k,
                                   kernels::TopKOrder order) {
  thread_local std::vector<float> code_scores;
  const absl::Time start = absl::Now();
  std::vector<float> ordered;
  group_queries = OrderedQueries(keys, group_queries, group_size, &ordered);
  const std::vector<float> exact_keys = ExactKeys(keys);
  kernels::GqaScoringInput input;
  input.head_dim = keys.head_dim;
  input.centroids = keys.codebook->centroids().data();
  input.codes = keys.codes;
  input.exact_keys = exact_keys.data();
  input.num_exact = keys.num_tokens - NumEncoded(keys);
  input.group_queries = group_queries;
  input.group_size = group_size;
  code_scores.resize(keys.codes->joined_size());
  std::vector<float> exact_scores(input.num_exact);
  std::vector<double> log_normalisers(group_size);
  if (!kernels::ScoreGqaJoined(input, code_scores.data(), exact_scores.data(),
                               log_normalisers.data())) {
    HeadSelection overflow;
    overflow.overflow = true;
    return overflow;
  }
  const absl::Time scanned = absl::Now();
  kernels::CodeScores scored;
  scored.codes = keys.codes;
  scored.code_scores = code_scores.data();
  scored.exact_scores = exact_scores.data();
  scored.num_tokens = static_cast<uint32_t>(keys.num_tokens);
  HeadSelection selection;
  selection.positions.resize(k);
  selection.scores.resize(k);
  kernels::SelectTopKByCode(scored, candidate_begin, candidate_end, k, selection.positions.data(),
                            selection.scores.data(), order);
  selection.log_normalisers = std::move(log_normalisers);
  selection.scan_us = absl::ToDoubleMicroseconds(scanned - start);
  selection.select_us = absl::ToDoubleMicroseconds(absl::Now() - scanned);
  return selection;
}

}  // namespace

HeadSelection ScoreAndSelect(const HeadKeys& keys, const float* group_queries, int group_size,
                             uint32_t candidate_begin, uint32_t candidate_end, uint32_t k,
                             kernels::TopKOrder order) {
  if (kernels::ChooseScanPath(keys.codes) == kernels::ScanPath::kJoined) {
    return ScoreAndSelectByCode(keys, group_queries, group_size, candidate_begin, candidate_end, k,
                                order);
  }
  std::vector<float>& scores = ScoreScratch(keys.num_tokens);
  std::vector<double> log_normalisers(group_size);
  const absl::Time start = absl::Now();
  if (!ScoreAll(keys, group_queries, group_size, scores.data(), log_normalisers.data())) {
    HeadSelection overflow;
    overflow.overflow = true;
    return overflow;
  }
  const absl::Time scanned = absl::Now();
  HeadSelection selection =
      Select(scores, candidate_begin, candidate_end, k, /*plain=*/false, order);
  selection.log_normalisers = std::move(log_normalisers);
  selection.scan_us = absl::ToDoubleMicroseconds(scanned - start);
  selection.select_us = absl::ToDoubleMicroseconds(absl::Now() - scanned);
  return selection;
}

HeadSelection ScoreAndSelectPlain(const HeadKeys& keys, const float* group_queries, int group_size,
                                  uint32_t candidate_begin, uint32_t candidate_end, uint32_t k) {
  const size_t n = keys.num_tokens;
  const int dim = keys.head_dim;
  const size_t encoded = NumEncoded(keys);
  std::vector<float> ordered;
  group_queries = OrderedQueries(keys, group_queries, group_size, &ordered);
  const std::vector<float> exact_keys = ExactKeys(keys);
  std::vector<float> table;
  const uint8_t* codes = nullptr;
  std::vector<uint8_t> unpacked;  // a store without its byte layout (dim4 only)
  if (encoded > 0) {
    const kernels::PqShape& shape = keys.codebook->shape();
    table.resize(static_cast<size_t>(shape.subspaces) * shape.centroids_per_subspace);
    codes = keys.codes->codes();
    if (codes == nullptr) {
      unpacked.resize(encoded * static_cast<size_t>(shape.subspaces));
      keys.codes->CopyCodes(0, encoded, unpacked.data());
      codes = unpacked.data();
    }
  }
  std::vector<float> logits(n);
  std::vector<float> combined(n, 0.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  for (int g = 0; g < group_size; ++g) {
    const float* query = group_queries + static_cast<size_t>(g) * dim;
    if (encoded > 0) {
      const kernels::PqShape& shape = keys.codebook->shape();
      kernels::ComputeInnerProductTable(shape, query, keys.codebook->centroids().data(),
                                        table.data());
      kernels::AdcScan(shape, table.data(), codes, encoded, logits.data());
    }
    kernels::ExactScores(query, exact_keys.data(), n - encoded, dim, logits.data() + encoded);
    kernels::AccumulateSoftmax(logits.data(), n, scale, combined.data());
  }
  for (float score : combined) {
    if (!std::isfinite(score)) {
      HeadSelection overflow;
      overflow.overflow = true;
      return overflow;
    }
  }
  return Select(combined, candidate_begin, candidate_end, k, /*plain=*/true);
}

bool ScoreExactRows(const void* const* rows, size_t n, kernels::ElementType dtype, int head_dim,
                    const float* group_queries, int group_size, float* scores) {
  std::vector<double> log_normalisers(group_size);
  return SoftmaxSumOfRows(rows, n, dtype, head_dim, group_queries, group_size, scores,
                          log_normalisers.data());
}

std::vector<double> LogNormalisers(const HeadKeys& keys, const float* group_queries,
                                   int group_size) {
  std::vector<double> log_normalisers(group_size);
  if (!ScoreAll(keys, group_queries, group_size, ScoreScratch(keys.num_tokens).data(),
                log_normalisers.data())) {
    return {};
  }
  return log_normalisers;
}

}  // namespace pqkv::server

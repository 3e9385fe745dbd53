#include "server/index/exact_rerank.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/time/clock.h"
#include "kernels/gqa_scoring.h"
#include "kernels/radix_select.h"
#include "kernels/row_dots.h"
#include "kernels/vector_exp.h"

namespace pqkv::server {
namespace {

// Per-thread arrays, reused: fresh ones (some past malloc's mmap threshold) cost page
// faults on every call. A call far larger than a decode step's (rerank x k in the
// hundreds of thousands) gives its memory back instead of keeping it for the thread.
struct Scratch {
  std::vector<uint32_t> tokens, encoded, uncoded, order;
  std::vector<const void*> rows;
  std::vector<float> logits, score, exps;
  std::vector<double> inside;

  static constexpr size_t kKeepTokens = size_t{1} << 17;
  void TrimAfter(size_t tokens_used) {
    if (tokens_used > kKeepTokens) *this = Scratch();
  }
};
thread_local Scratch scratch;

}  // namespace

HeadSelection RerankExact(const HeadKeys& keys, const float* group_queries, int group_size,
                          uint32_t candidate_begin, uint32_t candidate_end,
                          const HeadSelection& candidates, uint32_t k) {
  const absl::Time start = absl::Now();
  HeadSelection out;
  std::vector<double> log_z = candidates.log_normalisers;
  if (log_z.size() != static_cast<size_t>(group_size)) {
    log_z = LogNormalisers(keys, group_queries, group_size);
    if (log_z.empty()) {
      out.overflow = true;
      return out;
    }
  }
  const size_t c = candidates.positions.size();
  // The re-ranked set R, scored exactly, in position order so the rows are read front to
  // back: the candidates (sorted), then the sinks and the recent window.
  std::vector<uint32_t>& tokens = scratch.tokens;
  tokens.assign(candidates.positions.begin(), candidates.positions.end());
  if (!std::is_sorted(tokens.begin(), tokens.end())) std::sort(tokens.begin(), tokens.end());
  for (uint32_t t = 0; t < candidate_begin; ++t) tokens.push_back(t);
  for (size_t t = candidate_end; t < keys.num_tokens; ++t) tokens.push_back(t);
  const size_t r = tokens.size();
  // The scan's probability mass of R per query head, exp(scale x logit - log Z) summed
  // over R with the scan's logits: its code logits for the encoded tokens (in the
  // codebook's dimension order) here, while the scan's codes are in cache (the key rows
  // streaming through below evict them); the exact ones of the tail it scored exactly
  // after R's exact logits. In a decode step every token of R is encoded, and R's own
  // order is used as is.
  const size_t num_encoded = keys.codes != nullptr ? keys.codes->size() : 0;
  bool all_encoded = true;
  for (uint32_t t : tokens) all_encoded &= t < num_encoded;
  std::vector<uint32_t>& encoded = scratch.encoded;
  std::vector<uint32_t>& uncoded = scratch.uncoded;  // indices into R
  encoded.clear();
  uncoded.clear();
  if (!all_encoded) {
    for (size_t i = 0; i < r; ++i) {
      if (tokens[i] < num_encoded) {
        encoded.push_back(tokens[i]);
      } else {
        uncoded.push_back(static_cast<uint32_t>(i));
      }
    }
  }
  const uint32_t* coded = all_encoded ? tokens.data() : encoded.data();
  const size_t num_coded = all_encoded ? r : encoded.size();
  std::vector<double>& inside = scratch.inside;
  inside.assign(group_size, 0.0);
  if (num_coded > 0) {
    std::vector<float> ordered;
    const float* queries = group_queries;
    if (keys.codebook->permutes()) {
      ordered.resize(static_cast<size_t>(group_size) * keys.head_dim);
      keys.codebook->PermuteDims(group_queries, group_size, ordered.data());
      queries = ordered.data();
    }
    kernels::GqaScoringInput input;
    input.head_dim = keys.head_dim;
    input.centroids = keys.codebook->centroids().data();
    input.codes = keys.codes;
    input.group_queries = queries;
    input.group_size = group_size;
    kernels::GqaCodeMass(input, coded, num_coded, log_z.data(), inside.data());
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(keys.head_dim));
  std::vector<float>& exps = scratch.exps;
  exps.resize(r);

  // R's exact logits.
  std::vector<const void*>& rows = scratch.rows;
  rows.resize(r);
  for (size_t i = 0; i < r; ++i) rows[i] = keys.rows->Row(tokens[i]);
  std::vector<float>& logits = scratch.logits;  // [group][row]
  logits.resize(r * group_size);
  kernels::RowDots(keys.dtype, rows.data(), r, keys.head_dim, group_queries, group_size,
                   logits.data());

  // Per query head: Z = (the scan's Z minus its terms for R) + R's exact terms, i.e. exact
  // terms for R and the scan's approximate ones for every other token. Shifted by the
  // largest exponent so nothing overflows; the scan's share outside R is clamped at 0
  // against rounding when R holds nearly all of it.
  std::vector<float>& score = scratch.score;
  score.assign(c, 0.0f);
  for (int g = 0; g < group_size; ++g) {
    const float* exact = logits.data() + static_cast<size_t>(g) * r;
    const float max_logit = kernels::MaxOf(exact, r);
    if (!std::isfinite(max_logit) || !std::isfinite(log_z[g])) {
      out.overflow = true;
      return out;
    }
    double scan_mass = inside[g];  // the scan's probability mass of R
    for (uint32_t i : uncoded) {
      scan_mass += std::exp(scale * exact[i] - static_cast<float>(log_z[g]));
    }
    const double shift = std::max(log_z[g], static_cast<double>(scale * max_logit));
    const double exact_sum =
        kernels::ExpAndSum(exact, r, scale, static_cast<float>(shift), exps.data());
    const double outside =
        std::exp(log_z[g] - static_cast<float>(shift)) * std::max(0.0, 1 - scan_mass);
    const float inverse_z = static_cast<float>(1.0 / (exact_sum + outside));
    kernels::AddScaled(exps.data(), c, inverse_z, score.data());
  }
  // Best first; ties to the lower index, which is the lower position (sorted above).
  std::vector<uint32_t>& order = scratch.order;
  order.resize(k);
  kernels::SelectTopK(score.data(), 0, static_cast<uint32_t>(c), k, order.data());
  // Written in place (push_back reloaded the vectors' ends through memory each time),
  // the positions read from R a few ahead: R's list left the cache while its rows streamed.
  out.positions.resize(k);
  out.scores.resize(k);
  constexpr uint32_t kAhead = 16;
  for (uint32_t i = 0; i < k; ++i) {
    if (i + kAhead < k) __builtin_prefetch(&tokens[order[i + kAhead]]);
    out.positions[i] = tokens[order[i]];
    out.scores[i] = score[order[i]];
  }
  scratch.TrimAfter(r);
  out.scan_us = candidates.scan_us;
  out.select_us = candidates.select_us;
  out.rerank_us = absl::ToDoubleMicroseconds(absl::Now() - start);
  return out;
}

}  // namespace pqkv::server

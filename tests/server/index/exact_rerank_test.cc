#include "server/index/exact_rerank.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/pq_code_store.h"
#include "server/index/pq_codebook.h"
#include "server/memory/page_arena.h"
#include "server/memory/paged_rows.h"

namespace pqkv::server {
namespace {

constexpr int kDim = 16;

struct Keys {
  std::unique_ptr<PageArena> arena = PageArena::Create(16 << 20, 4096).value();
  PagedRows rows{arena.get(), kDim * sizeof(float)};
  std::vector<float> keys;
  // plant: changes the random keys before they are stored.
  explicit Keys(size_t n, const std::function<void(std::vector<float>&)>& plant = {}) {
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    keys.resize(n * kDim);
    for (float& x : keys) x = normal(rng);
    if (plant) plant(keys);
    rows.AddPages(arena->Allocate(rows.PagesNeededFor(n)).value());
    rows.Append(reinterpret_cast<const char*>(keys.data()), n);
  }
};

TEST_CASE("RerankExact over every candidate is the exact selection", "[server]") {
  const size_t n = 600;
  const uint32_t begin = 4, end = 536, k = 20;
  Keys f(n);
  std::vector<float> queries(3 * kDim);
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (float& x : queries) x = normal(rng);
  // A coarse codebook (2 x 2 bits) ranks badly; re-ranking all candidates must not care.
  const PqCodebook codebook = PqCodebook::Train(f.keys.data(), n, kDim, 2, 2, 5).value();
  kernels::PqCodeStore codes(2, 2);
  std::vector<uint8_t> head_codes(n * 2);
  codebook.Encode(f.keys.data(), n, head_codes.data());
  codes.Append(head_codes.data(), n);
  HeadKeys pq{&f.rows, n, kernels::ElementType::kFp32, kDim, &codebook, &codes};
  HeadKeys exact{&f.rows, n, kernels::ElementType::kFp32, kDim, nullptr, nullptr};

  const HeadSelection want = ScoreAndSelect(exact, queries.data(), 3, begin, end, k);
  const HeadSelection all = ScoreAndSelect(pq, queries.data(), 3, begin, end, end - begin);
  const HeadSelection got = RerankExact(pq, queries.data(), 3, begin, end, all, k);
  REQUIRE(got.positions.size() == k);
  CHECK(got.positions == want.positions);
  for (uint32_t i = 0; i < k; ++i) CHECK(got.scores[i] == Approx(want.scores[i]).epsilon(1e-4));

  SECTION("fewer candidates: the best of them by exact score, best first") {
    const HeadSelection some = ScoreAndSelect(pq, queries.data(), 3, begin, end, 4 * k);
    const HeadSelection refined = RerankExact(pq, queries.data(), 3, begin, end, some, k);
    REQUIRE(refined.positions.size() == k);
    CHECK(std::is_sorted(refined.scores.rbegin(), refined.scores.rend()));
    for (uint32_t p : refined.positions) {
      CHECK(std::find(some.positions.begin(), some.positions.end(), p) != some.positions.end());
    }
    // At least as close to the exact top-k as the scan's own first k.
    auto overlap = [&](const std::vector<uint32_t>& v) {
      size_t hits = 0;
      for (uint32_t p : v) {
        hits += std::find(want.positions.begin(), want.positions.end(), p) != want.positions.end();
      }
      return hits;
    };
    const std::vector<uint32_t> scan_first_k(some.positions.begin(), some.positions.begin() + k);
    CHECK(overlap(refined.positions) >= overlap(scan_first_k));
  }
}

// The GQA softmax-sum over all n tokens of exact fp32 logits, in double; with a codebook,
// the tokens outside `exact_set` take the logit of their reconstructed key instead.
std::vector<double> ExactScores(const std::vector<float>& keys, size_t n,
                                const std::vector<float>& queries, int group,
                                const PqCodebook* codebook = nullptr,
                                const std::vector<uint8_t>& codes = {},
                                const std::vector<bool>& exact_set = {}) {
  std::vector<double> scores(n, 0.0);
  for (int g = 0; g < group; ++g) {
    std::vector<double> logits(n);
    for (size_t t = 0; t < n; ++t) {
      double dot = 0;
      for (int i = 0; i < kDim; ++i) {
        float k = keys[t * kDim + i];
        if (codebook != nullptr && !exact_set[t]) {
          const kernels::PqShape& s = codebook->shape();
          const int m = i / s.subspace_dim;
          k = codebook->centroids()[(m * s.centroids_per_subspace + codes[t * s.subspaces + m]) *
                                        s.subspace_dim +
                                    i % s.subspace_dim];
        }
        dot += double(queries[g * kDim + i]) * k;
      }
      logits[t] = dot / std::sqrt(double(kDim));
    }
    const double max = *std::max_element(logits.begin(), logits.end());
    double z = 0;
    for (double l : logits) z += std::exp(l - max);
    for (size_t t = 0; t < n; ++t) scores[t] += std::exp(logits[t] - max) / z;
  }
  return scores;
}

TEST_CASE("RerankExact's scores are softmax over all tokens, not over the re-ranked ones",
          "[server]") {
  // 4096 tokens; k = 10 from 4 x 10 candidates, 4 sinks, 64 recent: the re-ranked set is
  // 108 tokens. Two query heads: a retrieval head whose mass sits on 5 planted tokens and
  // a diffuse one (or both diffuse). A normaliser over the 108 tokens alone makes a
  // diffuse head's terms up to 4096 / 108 times too large.
  const size_t n = 4096;
  const uint32_t begin = 4, end = n - 64, k = 10, rerank = 4;
  std::mt19937 rng(21);
  std::normal_distribution<float> normal;
  std::vector<float> queries(2 * kDim);
  for (float& x : queries) x = 0.5f * normal(rng);
  const bool diffuse = GENERATE(false, true);
  // Planted: tokens 1000, 1500, ... share one direction u; query head 0 is 3u.
  std::vector<float> u(kDim);
  for (float& x : u) x = normal(rng);
  if (!diffuse) {
    for (int i = 0; i < kDim; ++i) queries[i] = 3 * u[i];
  }
  Keys f(n, [&](std::vector<float>& keys) {
    if (diffuse) return;
    for (uint32_t t : {1000u, 1500u, 2000u, 2500u, 3000u}) {
      std::copy(u.begin(), u.end(), keys.begin() + t * kDim);
    }
  });
  const PqCodebook codebook = PqCodebook::Train(f.keys.data(), n, kDim, 4, 8, 10).value();
  kernels::PqCodeStore codes(4, 8);
  std::vector<uint8_t> head_codes(n * 4);
  codebook.Encode(f.keys.data(), n, head_codes.data());
  // Every token encoded, or the last 48 not yet (the scan scores them exactly, and the
  // re-rank takes their exact terms out of its normaliser instead of code terms).
  const size_t encoded = GENERATE(size_t{4096}, size_t{4096 - 48});
  codes.Append(head_codes.data(), encoded);
  HeadKeys pq{&f.rows, n, kernels::ElementType::kFp32, kDim, &codebook, &codes};

  const HeadSelection candidates = ScoreAndSelect(pq, queries.data(), 2, begin, end, rerank * k);
  SECTION("with the scan's normalisers") {
    const HeadSelection got = RerankExact(pq, queries.data(), 2, begin, end, candidates, k);
    REQUIRE(got.positions.size() == k);
    // What they are: exact logits for the re-ranked set, the codes' logits for the rest.
    std::vector<bool> reranked(n, false);
    for (uint32_t t = 0; t < n; ++t) reranked[t] = t < begin || t >= end;
    for (uint32_t p : candidates.positions) reranked[p] = true;
    const std::vector<double> defined =
        ExactScores(f.keys, n, queries, 2, &codebook, head_codes, reranked);
    // What they approximate: exact softmax over all tokens (a normaliser over the re-ranked
    // set alone made them 1.4 times too large here, 20 to 30 times with both heads diffuse).
    const std::vector<double> exact = ExactScores(f.keys, n, queries, 2);
    for (uint32_t i = 0; i < k; ++i) {
      INFO("rank " << i << ", position " << got.positions[i]);
      CHECK(got.scores[i] == Approx(defined[got.positions[i]]).epsilon(1e-3));
      CHECK(got.scores[i] == Approx(exact[got.positions[i]]).epsilon(0.1));
    }
  }
  SECTION("without them (a GPU selection): computed again, the same scores") {
    HeadSelection bare = candidates;
    bare.log_normalisers.clear();
    const HeadSelection with = RerankExact(pq, queries.data(), 2, begin, end, candidates, k);
    const HeadSelection got = RerankExact(pq, queries.data(), 2, begin, end, bare, k);
    CHECK(got.positions == with.positions);
    for (uint32_t i = 0; i < k; ++i) CHECK(got.scores[i] == Approx(with.scores[i]).epsilon(1e-6));
  }
}

}  // namespace
}  // namespace pqkv::server

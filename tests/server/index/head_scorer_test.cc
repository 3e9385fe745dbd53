#include "server/index/head_scorer.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/dtype_convert.h"

namespace pqkv::server {
namespace {

struct Fixture {
  static constexpr int kDim = 32;
  std::unique_ptr<PageArena> arena = PageArena::Create(64 << 20, 4096).value();
  PagedRows rows{arena.get(), kDim * sizeof(float)};
  std::vector<float> keys;

  explicit Fixture(size_t n) {
    std::mt19937 rng(static_cast<uint32_t>(n));
    std::normal_distribution<float> normal;
    keys.resize(n * kDim);
    for (float& x : keys) x = normal(rng);
    rows.AddPages(arena->Allocate(rows.PagesNeededFor(n)).value());
    rows.Append(reinterpret_cast<const char*>(keys.data()), n);
  }
};

// Independent reference: reconstructed keys (codes) or raw keys, double-precision
// softmax per query head, summed.
std::vector<double> ReferenceScores(const std::vector<float>& keys, size_t n, int dim,
                                    const PqCodebook* codebook, const std::vector<uint8_t>& codes,
                                    size_t encoded, const std::vector<float>& queries, int group) {
  std::vector<double> combined(n, 0.0);
  for (int g = 0; g < group; ++g) {
    std::vector<double> logits(n);
    for (size_t t = 0; t < n; ++t) {
      double dot = 0;
      for (int i = 0; i < dim; ++i) {
        float k = keys[t * dim + i];
        if (t < encoded) {
          const auto& s = codebook->shape();
          const int m = i / s.subspace_dim;
          k = codebook->centroids()[(m * s.centroids_per_subspace + codes[t * s.subspaces + m]) *
                                        s.subspace_dim +
                                    i % s.subspace_dim];
        }
        dot += double(queries[g * dim + i]) * k;
      }
      logits[t] = dot / std::sqrt(double(dim));
    }
    const double max = *std::max_element(logits.begin(), logits.end());
    double z = 0;
    for (double l : logits) z += std::exp(l - max);
    for (size_t t = 0; t < n; ++t) combined[t] += std::exp(logits[t] - max) / z;
  }
  return combined;
}

void CheckSelection(const HeadSelection& got, const std::vector<double>& reference, uint32_t begin,
                    uint32_t end, uint32_t k) {
  REQUIRE(got.positions.size() == k);
  std::vector<double> candidates(reference.begin() + begin, reference.begin() + end);
  std::nth_element(candidates.begin(), candidates.begin() + (k - 1), candidates.end(),
                   std::greater<>());
  const double kth = candidates[k - 1];
  for (size_t i = 0; i < k; ++i) {
    const uint32_t p = got.positions[i];
    REQUIRE(p >= begin);
    REQUIRE(p < end);
    REQUIRE(got.scores[i] == Approx(reference[p]).margin(1e-6).epsilon(1e-4));
    REQUIRE(reference[p] >= kth - 1e-6);
    if (i > 0) REQUIRE(got.scores[i] <= got.scores[i - 1]);
  }
}

TEST_CASE("ScoreAndSelect matches the reference with codes, without, and mixed", "[server]") {
  // (M, bits): joined codes (2 x 4, 2 x 6), generic scan (4 x 8).
  const auto [M, bits] = GENERATE(std::make_pair(2, 4), std::make_pair(2, 6), std::make_pair(4, 8));
  const size_t n = GENERATE(size_t{300}, size_t{1001});
  const int group = GENERATE(1, 4);
  const double encoded_fraction = GENERATE(0.0, 0.5, 1.0);
  const bool plain = GENERATE(false, true);
  const size_t encoded = static_cast<size_t>(encoded_fraction * n);
  Fixture f(n);
  const int dim = Fixture::kDim;
  auto codebook = PqCodebook::Train(f.keys.data(), n, dim, M, bits, 5).value();
  std::vector<uint8_t> codes(n * M);
  codebook.Encode(f.keys.data(), n, codes.data());
  kernels::PqCodeStore store(M, bits);
  store.Append(codes.data(), encoded);
  std::mt19937 rng(group);
  std::normal_distribution<float> normal;
  std::vector<float> queries(group * dim);
  for (float& q : queries) q = 2 * normal(rng);

  HeadKeys keys;
  keys.rows = &f.rows;
  keys.num_tokens = n;
  keys.dtype = kernels::ElementType::kFp32;
  keys.head_dim = dim;
  if (encoded > 0) {
    keys.codebook = &codebook;
    keys.codes = &store;
  }
  const uint32_t begin = 10, end = static_cast<uint32_t>(n - 20), k = 50;
  const HeadSelection got = plain ? ScoreAndSelectPlain(keys, queries.data(), group, begin, end, k)
                                  : ScoreAndSelect(keys, queries.data(), group, begin, end, k);
  CheckSelection(got, ReferenceScores(f.keys, n, dim, &codebook, codes, encoded, queries, group),
                 begin, end, k);
  if (!plain) {
    // In position order: the same positions and their scores, ascending.
    const HeadSelection by_position =
        ScoreAndSelect(keys, queries.data(), group, begin, end, k, kernels::TopKOrder::kPosition);
    std::vector<std::pair<uint32_t, float>> want, have;
    for (uint32_t i = 0; i < k; ++i) {
      want.emplace_back(got.positions[i], got.scores[i]);
      have.emplace_back(by_position.positions[i], by_position.scores[i]);
    }
    std::sort(want.begin(), want.end());
    CHECK(have == want);
    CHECK(by_position.log_normalisers == got.log_normalisers);
  }
}

TEST_CASE("ScoreAndSelect on 4-bit fast-scan codes stays close to the float reference",
          "[server]") {
  const size_t n = 2000;
  const int M = 8, group = 4, dim = Fixture::kDim;
  Fixture f(n);
  auto codebook = PqCodebook::Train(f.keys.data(), n, dim, M, 4, 5).value();
  std::vector<uint8_t> codes(n * M);
  codebook.Encode(f.keys.data(), n, codes.data());
  kernels::PqCodeStore store(M, 4);
  store.Append(codes.data(), n);
  REQUIRE(store.has_fast_scan());
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> queries(group * dim);
  for (float& q : queries) q = 2 * normal(rng);
  HeadKeys keys{&f.rows, n, kernels::ElementType::kFp32, dim, &codebook, &store};
  const uint32_t k = 100;
  const HeadSelection fast = ScoreAndSelect(keys, queries.data(), group, 0, n, k);
  const HeadSelection plain = ScoreAndSelectPlain(keys, queries.data(), group, 0, n, k);
  // 8-bit tables shift scores by a few percent at most; the selections mostly agree.
  const std::vector<double> reference =
      ReferenceScores(f.keys, n, dim, &codebook, codes, n, queries, group);
  for (size_t i = 0; i < k; ++i) {
    REQUIRE(fast.scores[i] == Approx(reference[fast.positions[i]]).epsilon(0.1));
  }
  std::vector<uint32_t> a = fast.positions, b = plain.positions;
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  std::vector<uint32_t> common;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(common));
  CHECK(common.size() >= 0.8 * k);
}

TEST_CASE("ScoreAndSelect scores fp16 and bf16 rows in place when no token has codes", "[server]") {
  // The exact path reads the stored rows (no fp32 copy); scores, selection and the log
  // normalisers must match a double-precision reference on the rounded keys.
  const kernels::ElementType dtype =
      GENERATE(kernels::ElementType::kFp16, kernels::ElementType::kBf16);
  const int group = GENERATE(1, 4);
  constexpr int kDim = 64;
  const size_t n = 777;
  auto arena = PageArena::Create(16 << 20, 4096).value();
  PagedRows rows(arena.get(), kDim * sizeof(uint16_t));
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> stored(n * kDim);
  std::vector<float> rounded(n * kDim);
  for (size_t i = 0; i < stored.size(); ++i) {
    const float x = normal(rng);
    stored[i] =
        dtype == kernels::ElementType::kFp16 ? kernels::FloatToHalf(x) : kernels::FloatToBf16(x);
    rounded[i] = dtype == kernels::ElementType::kFp16 ? kernels::HalfToFloat(stored[i])
                                                      : kernels::Bf16ToFloat(stored[i]);
  }
  rows.AddPages(arena->Allocate(rows.PagesNeededFor(n)).value());
  rows.Append(reinterpret_cast<const char*>(stored.data()), n);
  std::vector<float> queries(group * kDim);
  for (float& q : queries) q = 3 * normal(rng);

  HeadKeys keys{&rows, n, dtype, kDim};
  const uint32_t begin = 4, end = static_cast<uint32_t>(n - 64), k = 40;
  const HeadSelection got = ScoreAndSelect(keys, queries.data(), group, begin, end, k);
  CheckSelection(got, ReferenceScores(rounded, n, kDim, nullptr, {}, 0, queries, group), begin, end,
                 k);
  REQUIRE(got.log_normalisers.size() == static_cast<size_t>(group));
  for (int g = 0; g < group; ++g) {
    std::vector<double> logits(n);
    for (size_t t = 0; t < n; ++t) {
      double dot = 0;
      for (int i = 0; i < kDim; ++i) dot += double(queries[g * kDim + i]) * rounded[t * kDim + i];
      logits[t] = dot / std::sqrt(double(kDim));
    }
    const double max = *std::max_element(logits.begin(), logits.end());
    double z = 0;
    for (double l : logits) z += std::exp(l - max);
    CHECK(got.log_normalisers[g] == Approx(max + std::log(z)).epsilon(1e-5));
  }
}

TEST_CASE("ScoreAndSelect reports a logit that overflows on the exact path", "[server]") {
  // fp32 keys near the largest float times a large query: the dot product is +inf.
  constexpr int kDim = 8;
  auto arena = PageArena::Create(1 << 20, 4096).value();
  PagedRows rows(arena.get(), kDim * sizeof(float));
  std::vector<float> stored(20 * kDim, 3e38f);
  rows.AddPages(arena->Allocate(rows.PagesNeededFor(20)).value());
  rows.Append(reinterpret_cast<const char*>(stored.data()), 20);
  std::vector<float> queries(kDim, 1e3f);
  HeadKeys keys{&rows, 20, kernels::ElementType::kFp32, kDim};
  CHECK(ScoreAndSelect(keys, queries.data(), 1, 0, 20, 5).overflow);
}

TEST_CASE("ScoreAndSelect scores sum to the group size over all tokens", "[server]") {
  Fixture f(200);
  std::vector<float> queries(3 * Fixture::kDim, 0.1f);
  HeadKeys keys{&f.rows, 200, kernels::ElementType::kFp32, Fixture::kDim};
  const HeadSelection all = ScoreAndSelect(keys, queries.data(), 3, 0, 200, 200);
  CHECK(std::accumulate(all.scores.begin(), all.scores.end(), 0.0) == Approx(3.0).epsilon(1e-5));
}

}  // namespace
}  // namespace pqkv::server

namespace pqkv::server {
namespace {

TEST_CASE("ScoreAndSelect with RoPE pairs scores like the exact keys", "[server]") {
  const bool rope_pairs = GENERATE(false, true);
  constexpr int kDim = Fixture::kDim;
  // 16 training keys, one per centroid (exact reconstruction), plus an exact tail: codes
  // (in the reordered dimensions) and exact dot products must agree on one scale.
  const size_t encoded = 16, n = 40;
  Fixture f(n);
  const PqCodebook codebook =
      PqCodebook::Train(f.keys.data(), encoded, kDim, 2, 4, 20, rope_pairs).value();
  kernels::PqCodeStore codes(2, 4);
  std::vector<uint8_t> head_codes(encoded * 2);
  codebook.Encode(f.keys.data(), encoded, head_codes.data());
  codes.Append(head_codes.data(), encoded);

  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> queries(2 * kDim);
  for (float& x : queries) x = normal(rng);
  HeadKeys with_codes{&f.rows, n, kernels::ElementType::kFp32, kDim, &codebook, &codes};
  HeadKeys exact{&f.rows, n, kernels::ElementType::kFp32, kDim, nullptr, nullptr};
  const HeadSelection a = ScoreAndSelect(with_codes, queries.data(), 2, 0, n, 10);
  const HeadSelection b = ScoreAndSelect(exact, queries.data(), 2, 0, n, 10);
  REQUIRE(a.positions.size() == b.positions.size());
  for (size_t i = 0; i < a.positions.size(); ++i) {
    CHECK(a.positions[i] == b.positions[i]);
    CHECK(a.scores[i] == Approx(b.scores[i]).epsilon(1e-4));
  }
  const HeadSelection plain = ScoreAndSelectPlain(with_codes, queries.data(), 2, 0, n, 10);
  CHECK(plain.positions == b.positions);
}

}  // namespace
}  // namespace pqkv::server

#include "kernels/gqa_scoring.h"

#include <cmath>
#include <random>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/dim4_scan.h"
#include "kernels/fast_scan.h"
#include "kernels/gqa_softmax.h"

namespace pqkv::kernels {
namespace {

struct Case {
  int M, bits, dim, group;
  size_t encoded, exact;
  bool per_dimension = false;  // M == dim: the dim4 path at 4 bits
};

// Centroids fp32 [M][ksub][dim / M]; per dimension, a uniform grid lo + step x c per
// dimension (what PqCodebook trains for one-dimension sub-spaces).
std::vector<float> RandomCentroids(const Case& c, std::mt19937& rng) {
  const int ksub = 1 << c.bits;
  std::normal_distribution<float> normal;
  std::vector<float> centroids(static_cast<size_t>(c.M) * ksub * (c.dim / c.M));
  if (!c.per_dimension) {
    for (float& v : centroids) v = normal(rng);
    return centroids;
  }
  std::uniform_real_distribution<float> step(0.05f, 0.5f);
  for (int d = 0; d < c.M; ++d) {
    const float lo = normal(rng) - 2, s = step(rng);
    for (int k = 0; k < ksub; ++k) centroids[d * ksub + k] = lo + s * k;
  }
  return centroids;
}

// Plain reference: per query head, logits from `tables` (float [M][ksub] per head) or raw
// keys, AccumulateSoftmax over all tokens.
std::vector<float> Reference(const Case& c, const std::vector<float>& tables,
                             const std::vector<uint8_t>& codes, const std::vector<float>& keys,
                             const std::vector<float>& queries) {
  const size_t n = c.encoded + c.exact;
  const int ksub = 1 << c.bits;
  std::vector<float> logits(n), scores(n, 0.0f);
  for (int g = 0; g < c.group; ++g) {
    const float* table = tables.data() + static_cast<size_t>(g) * c.M * ksub;
    for (size_t t = 0; t < c.encoded; ++t) {
      float sum = 0;
      for (int m = 0; m < c.M; ++m) sum += table[m * ksub + codes[t * c.M + m]];
      logits[t] = sum;
    }
    ExactScores(queries.data() + g * c.dim, keys.data(), c.exact, c.dim, logits.data() + c.encoded);
    AccumulateSoftmax(logits.data(), n, 1.0f / std::sqrt(float(c.dim)), scores.data());
  }
  return scores;
}

TEST_CASE("ScoreGqa equals the plain softmax-sum on every scan path", "[kernels]") {
  const Case c =
      GENERATE(Case{2, 6, 32, 4, 5000, 0}, Case{2, 6, 32, 4, 3000, 17}, Case{3, 4, 24, 1, 777, 3},
               Case{4, 8, 32, 4, 2001, 5}, Case{16, 4, 32, 4, 1000, 9}, Case{2, 4, 16, 5, 0, 300},
               Case{32, 4, 32, 4, 1000, 9, true}, Case{64, 4, 64, 6, 333, 2, true});
  const int ksub = 1 << c.bits;
  const PqShape shape{c.M, ksub, c.dim / c.M};
  std::mt19937 rng(c.M * 100 + c.bits + c.encoded);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> code(0, ksub - 1);
  const std::vector<float> centroids = RandomCentroids(c, rng);
  std::vector<uint8_t> codes(c.encoded * c.M);
  for (uint8_t& v : codes) v = static_cast<uint8_t>(code(rng));
  std::vector<float> keys(c.exact * c.dim), queries(static_cast<size_t>(c.group) * c.dim);
  for (float& v : keys) v = normal(rng);
  for (float& v : queries) v = 3 * normal(rng);
  PqCodeStore store(c.M, c.bits, c.per_dimension);
  store.Append(codes.data(), c.encoded);

  GqaScoringInput input;
  input.head_dim = c.dim;
  if (c.encoded > 0) {
    input.centroids = centroids.data();
    input.codes = &store;
  }
  input.exact_keys = keys.data();
  input.num_exact = c.exact;
  input.group_queries = queries.data();
  input.group_size = c.group;
  std::vector<float> got(c.encoded + c.exact);
  ScoreGqa(input, got.data());

  // The reference uses the tables the path itself scores with: float tables, or for
  // fast-scan the dequantised uint8 tables, for dim4 those of the int8 query (their one
  // approximation each, tested in fast_scan_test and dim4_scan_test).
  const bool fast_scan = ChooseScanPath(input.codes) == ScanPath::kFastScan;
  const bool dim4 = ChooseScanPath(input.codes) == ScanPath::kDim4;
  CHECK(dim4 == (c.per_dimension && c.encoded > 0));
  std::vector<float> tables(static_cast<size_t>(c.group) * c.M * ksub);
  for (int g = 0; g < c.group; ++g) {
    float* table = tables.data() + static_cast<size_t>(g) * c.M * ksub;
    ComputeInnerProductTable(shape, queries.data() + g * c.dim, centroids.data(), table);
    if (fast_scan) {
      std::vector<uint8_t> q(c.M * 16);
      const QuantizedTable p = QuantizeTable(table, c.M, q.data());
      for (int m = 0; m < c.M; ++m) {
        for (int j = 0; j < 16; ++j) table[m * 16 + j] = p.offset / c.M + p.scale * q[m * 16 + j];
      }
    }
    if (dim4) {
      std::vector<int8_t> w(c.dim);
      const Dim4Query p =
          QuantizeDim4Query(queries.data() + g * c.dim, centroids.data(), c.dim, w.data());
      for (int d = 0; d < c.dim; ++d) {
        for (int j = 0; j < 16; ++j) table[d * 16 + j] = p.offset / c.dim + p.scale * w[d] * j;
      }
    }
  }
  const std::vector<float> expected = Reference(c, tables, codes, keys, queries);
  for (size_t t = 0; t < got.size(); ++t) {
    REQUIRE(got[t] == Approx(expected[t]).epsilon(1e-3).margin(1e-7));
  }
}

TEST_CASE("ScoreGqa's log normalisers and GqaCodeLogits give back its scores on every path",
          "[kernels]") {
  // What RerankExact relies on: the scan's normaliser and the logits it used for any
  // token, so that tokens can be taken out of the normaliser exactly.
  const Case c = GENERATE(Case{2, 6, 32, 4, 3000, 17}, Case{3, 4, 24, 1, 777, 3},
                          Case{4, 8, 32, 4, 2001, 5}, Case{16, 4, 32, 4, 1000, 9},
                          Case{2, 4, 16, 3, 700, 0}, Case{32, 4, 32, 4, 1500, 7, true});
  const int ksub = 1 << c.bits;
  std::mt19937 rng(c.M * 7 + c.bits + c.encoded);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> code(0, ksub - 1);
  const std::vector<float> centroids = RandomCentroids(c, rng);
  std::vector<uint8_t> codes(c.encoded * c.M);
  for (uint8_t& v : codes) v = static_cast<uint8_t>(code(rng));
  std::vector<float> keys(c.exact * c.dim), queries(static_cast<size_t>(c.group) * c.dim);
  for (float& v : keys) v = normal(rng);
  for (float& v : queries) v = 3 * normal(rng);
  PqCodeStore store(c.M, c.bits, c.per_dimension);
  store.Append(codes.data(), c.encoded);
  GqaScoringInput input;
  input.head_dim = c.dim;
  input.centroids = centroids.data();
  input.codes = &store;
  input.exact_keys = keys.data();
  input.num_exact = c.exact;
  input.group_queries = queries.data();
  input.group_size = c.group;
  const size_t n = c.encoded + c.exact;
  std::vector<float> scores(n);
  std::vector<double> log_z(c.group);
  REQUIRE(ScoreGqa(input, scores.data(), log_z.data()));
  std::vector<uint32_t> positions(c.encoded);
  for (size_t t = 0; t < c.encoded; ++t) positions[t] = static_cast<uint32_t>(c.encoded - 1 - t);
  std::vector<float> logits(static_cast<size_t>(c.group) * c.encoded);
  GqaCodeLogits(input, positions.data(), positions.size(), logits.data());

  const double scale = 1 / std::sqrt(double(c.dim));
  std::vector<double> rebuilt(n, 0.0);
  for (int g = 0; g < c.group; ++g) {
    double mass = 0;
    for (size_t i = 0; i < c.encoded; ++i) {
      const double p = std::exp(scale * logits[g * c.encoded + i] - log_z[g]);
      rebuilt[positions[i]] += p;
      mass += p;
    }
    std::vector<float> tail(c.exact);
    ExactScores(queries.data() + g * c.dim, keys.data(), c.exact, c.dim, tail.data());
    for (size_t t = 0; t < c.exact; ++t) {
      const double p = std::exp(scale * tail[t] - log_z[g]);
      rebuilt[c.encoded + t] += p;
      mass += p;
    }
    CHECK(mass == Approx(1.0).epsilon(1e-5));  // each query head's softmax sums to 1
  }
  for (size_t t = 0; t < n; ++t) {
    REQUIRE(scores[t] == Approx(rebuilt[t]).epsilon(1e-4).margin(1e-9));
  }

  // GqaCodeMass of a third of the tokens: the same sums over those tokens' logits.
  std::vector<uint32_t> some;
  std::vector<double> expected(c.group, 0.0);
  for (size_t i = 0; i < c.encoded; i += 3) {
    some.push_back(positions[i]);
    for (int g = 0; g < c.group; ++g) {
      expected[g] += std::exp(scale * logits[g * c.encoded + i] - log_z[g]);
    }
  }
  std::vector<double> mass(c.group);
  GqaCodeMass(input, some.data(), some.size(), log_z.data(), mass.data());
  for (int g = 0; g < c.group; ++g) {
    CHECK(mass[g] == Approx(expected[g]).epsilon(1e-5).margin(1e-12));
  }
}

// 2 x 6 codes where the pair of each sub-space's best centroid is absent from the tokens:
// its joined logit lies far above every present code's, and an exponential of it
// overflows fp32. The joined scan must leave absent codes out of the normaliser rather
// than multiply their infinite exponential by a count of 0 (a NaN). Run by the portable
// variant too (its exp overflows where AVX2's saturates).
TEST_CASE("ScoreGqa's joined path ignores absent codes whose logits overflow", "[kernels]") {
  const int M = 2, bits = 6, ksub = 1 << bits, dim = 128, dsub = dim / M;
  std::vector<float> query(dim, 1.0f);
  std::vector<float> centroids(static_cast<size_t>(M) * ksub * dsub, 0.0f);
  for (int m = 0; m < M; ++m) {
    float* best = centroids.data() + static_cast<size_t>(m) * ksub * dsub;  // centroid 0
    for (int i = 0; i < dsub; ++i) best[i] = 40.0f;  // logit 2560 per sub-space
  }
  // Tokens take (0, 1), (1, 0) and (1, 1), never (0, 0): the largest present logit is
  // 2560, the absent pair's 5120, and exp((5120 - 2560) / sqrt(128)) overflows.
  std::vector<uint8_t> codes = {0, 1, 1, 0, 1, 1, 0, 1};
  PqCodeStore store(M, bits);
  store.Append(codes.data(), codes.size() / M);
  GqaScoringInput input;
  input.head_dim = dim;
  input.centroids = centroids.data();
  input.codes = &store;
  input.group_queries = query.data();
  input.group_size = 1;
  REQUIRE(ChooseScanPath(&store) == ScanPath::kJoined);
  std::vector<float> scores(store.size());
  double log_z = 0;
  REQUIRE(ScoreGqa(input, scores.data(), &log_z));
  CHECK(std::isfinite(log_z));
  // Tokens 0 and 3 share the code (0, 1), token 1 has (1, 0): the three of them hold the
  // mass equally (2560 each), token 2's (1, 1) none of it to fp32 precision.
  CHECK(scores[0] == Approx(1.0 / 3));
  CHECK(scores[1] == Approx(1.0 / 3));
  CHECK(scores[2] == Approx(0.0).margin(1e-30));
  CHECK(scores[3] == Approx(1.0 / 3));
  // So must GqaCodeMass, whose tokens 0 and 1 lack both (0, 0) and (1, 1).
  const uint32_t some[] = {0, 1};
  double mass = 0;
  GqaCodeMass(input, some, 2, &log_z, &mass);
  CHECK(mass == Approx(2.0 / 3));
}

TEST_CASE("ChooseScanPath picks the layout's path", "[kernels]") {
  PqCodeStore joined(2, 6), fast(16, 4), generic(4, 8), dim4(16, 4, /*per_dimension=*/true);
  const uint8_t zeros[16] = {0};
  joined.Append(zeros, 1);
  fast.Append(zeros, 1);
  generic.Append(zeros, 1);
  dim4.Append(zeros, 1);
  CHECK(ChooseScanPath(&joined) == ScanPath::kJoined);
  CHECK(ChooseScanPath(&fast) == ScanPath::kFastScan);
  CHECK(ChooseScanPath(&dim4) == ScanPath::kDim4);
  CHECK(ChooseScanPath(&generic) == ScanPath::kGeneric);
  CHECK(ChooseScanPath(nullptr) == ScanPath::kExactOnly);
}

}  // namespace
}  // namespace pqkv::kernels

#include "kernels/pq_scan.h"

#include <random>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::kernels {
namespace {

// Integer-valued inputs make every sum exact, so scores compare with ==.
std::vector<float> IntegerValues(size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> value(-8, 8);
  std::vector<float> out(n);
  for (float& x : out) x = static_cast<float>(value(rng));
  return out;
}

TEST_CASE("ADC scan equals brute-force scoring of the decoded keys", "[kernels]") {
  const int M = GENERATE(1, 2, 4, 8);
  const int bits = GENERATE(4, 6, 8);
  const size_t n = GENERATE(1, 37, 1000);
  const int dim = 64;
  const PqShape shape{M, 1 << bits, dim / M};
  std::mt19937 rng(M * 1000 + bits * 10 + static_cast<int>(n));
  const std::vector<float> centroids =
      IntegerValues(size_t(M) * shape.centroids_per_subspace * shape.subspace_dim, rng);
  const std::vector<float> query = IntegerValues(dim, rng);
  std::vector<uint8_t> codes(n * M);
  std::uniform_int_distribution<int> code(0, shape.centroids_per_subspace - 1);
  for (uint8_t& c : codes) c = static_cast<uint8_t>(code(rng));

  std::vector<float> table(size_t(M) * shape.centroids_per_subspace);
  ComputeInnerProductTable(shape, query.data(), centroids.data(), table.data());
  std::vector<float> scores(n);
  AdcScan(shape, table.data(), codes.data(), n, scores.data());

  // Reference: decode each token into its reconstructed key, then take <query, key>.
  std::vector<float> decoded(n * dim);
  for (size_t t = 0; t < n; ++t) {
    for (int m = 0; m < M; ++m) {
      const float* c =
          centroids.data() +
          (size_t(m) * shape.centroids_per_subspace + codes[t * M + m]) * shape.subspace_dim;
      std::copy(c, c + shape.subspace_dim, decoded.begin() + t * dim + m * shape.subspace_dim);
    }
  }
  std::vector<float> expected(n);
  ExactScores(query.data(), decoded.data(), n, dim, expected.data());
  for (size_t t = 0; t < n; ++t) REQUIRE(scores[t] == expected[t]);
}

TEST_CASE("ExactScores computes dot products", "[kernels]") {
  const float query[3] = {1, 2, 3};
  const float keys[6] = {1, 0, 0, -1, 1, 2};
  float out[2];
  ExactScores(query, keys, 2, 3, out);
  CHECK(out[0] == 1.0f);
  CHECK(out[1] == 7.0f);
}

}  // namespace
}  // namespace pqkv::kernels

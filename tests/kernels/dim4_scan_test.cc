#include "kernels/dim4_scan.h"

#include <cmath>
#include <random>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::kernels {
namespace {

TEST_CASE("Dim4Dots gives each token's exact integer dot product", "[kernels]") {
  const int head_dim = GENERATE(8, 64, 128, 136);
  const size_t n = GENERATE(size_t{1}, size_t{16}, size_t{1000});
  const int queries = GENERATE(1, 4, 6);
  std::mt19937 rng(head_dim + n + queries);
  std::uniform_int_distribution<int> code(0, 15), weight(-127, 127);
  std::vector<uint8_t> codes(n * head_dim);
  for (uint8_t& c : codes) c = static_cast<uint8_t>(code(rng));
  std::vector<int8_t> weights(static_cast<size_t>(queries) * head_dim);
  for (int8_t& w : weights) w = static_cast<int8_t>(weight(rng));
  // Extreme weights on the first query: the largest products must not saturate.
  for (int d = 0; d < head_dim; ++d) weights[d] = d % 2 ? -127 : 127;
  const size_t blocks = (n + kDim4BlockTokens - 1) / kDim4BlockTokens;
  std::vector<uint8_t> packed(blocks * Dim4BlockBytes(head_dim), 0);
  // Packed in two appends, as a store grows.
  const size_t first = n / 3;
  PackDim4(codes.data(), 0, first, head_dim, packed.data());
  PackDim4(codes.data() + first * head_dim, first, n - first, head_dim, packed.data());
  std::vector<uint8_t> unpacked(n * head_dim);
  UnpackDim4(packed.data(), 0, n, head_dim, unpacked.data());
  REQUIRE(unpacked == codes);
  const size_t stride = blocks * kDim4BlockTokens;
  std::vector<int32_t> fast(queries * stride), portable(queries * stride);
  Dim4Dots(packed.data(), blocks, head_dim, weights.data(), queries, fast.data(), stride);
  Dim4DotsPortable(packed.data(), blocks, head_dim, weights.data(), queries, portable.data(),
                   stride);
  for (int g = 0; g < queries; ++g) {
    for (size_t t = 0; t < n; ++t) {
      const uint8_t* c = codes.data() + t * head_dim;
      const int8_t* w = weights.data() + static_cast<size_t>(g) * head_dim;
      int32_t expected = 0;
      for (int d = 0; d < head_dim; ++d) expected += c[d] * w[d];
      REQUIRE(Dim4Dot(c, w, head_dim) == expected);
      REQUIRE(fast[g * stride + t] == expected);
      REQUIRE(portable[g * stride + t] == expected);
    }
  }
}

TEST_CASE("Dim4Dots holds the largest sums: every code 15, every weight 127 or -128",
          "[kernels]") {
  // The AVX2 kernel adds a group's low- and high-nibble products in int16 before widening
  // (at the bounds 2 x 2 x 15 x 128 = 7680), and vpmaddubsw saturates: neither may bite.
  const int head_dim = GENERATE(32, 128, 136);
  const int8_t extreme = GENERATE(int8_t{127}, int8_t{-128});
  const size_t n = 32;
  std::vector<uint8_t> codes(n * head_dim, 15);
  std::vector<int8_t> weights(static_cast<size_t>(4) * head_dim, extreme);
  const size_t blocks = n / kDim4BlockTokens;
  std::vector<uint8_t> packed(blocks * Dim4BlockBytes(head_dim), 0);
  PackDim4(codes.data(), 0, n, head_dim, packed.data());
  std::vector<int32_t> out(4 * n);
  Dim4Dots(packed.data(), blocks, head_dim, weights.data(), 4, out.data(), n);
  for (int32_t dot : out) REQUIRE(dot == 15 * extreme * head_dim);
}

TEST_CASE("QuantizeDim4Query reproduces q . level within the int8 rounding", "[kernels]") {
  const int head_dim = 64;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_real_distribution<float> step(0.01f, 1.0f);
  std::vector<float> levels(head_dim * 16), query(head_dim);
  for (int d = 0; d < head_dim; ++d) {
    const float lo = normal(rng), s = step(rng);
    for (int c = 0; c < 16; ++c) levels[d * 16 + c] = lo + s * c;
  }
  for (float& q : query) q = normal(rng);
  std::vector<int8_t> weights(head_dim);
  const Dim4Query params = QuantizeDim4Query(query.data(), levels.data(), head_dim, weights.data());
  REQUIRE(params.scale > 0);
  int largest = 0;
  for (int8_t w : weights) largest = std::max(largest, std::abs(int{w}));
  CHECK(largest == 127);  // the widest weight uses the whole int8 range
  std::uniform_int_distribution<int> code(0, 15);
  for (int trial = 0; trial < 100; ++trial) {
    std::vector<uint8_t> codes(head_dim);
    double exact = 0;
    for (int d = 0; d < head_dim; ++d) {
      codes[d] = static_cast<uint8_t>(code(rng));
      exact += static_cast<double>(query[d]) * levels[d * 16 + codes[d]];
    }
    const double approx =
        params.offset + params.scale * Dim4Dot(codes.data(), weights.data(), head_dim);
    // Each weight is off by at most half a unit of scale, times a code of at most 15.
    REQUIRE(std::abs(approx - exact) <= head_dim * 15 * 0.5 * params.scale + 1e-3);
  }
}

TEST_CASE("QuantizeDim4Query of a query orthogonal to every step has zero weights", "[kernels]") {
  const int head_dim = 8;
  std::vector<float> levels(head_dim * 16, 0.5f), query(head_dim, 1.0f);  // every level equal
  std::vector<int8_t> weights(head_dim, 9);
  const Dim4Query params = QuantizeDim4Query(query.data(), levels.data(), head_dim, weights.data());
  CHECK(params.scale == 0);
  CHECK(params.offset == Approx(4.0f));
  for (int8_t w : weights) CHECK(w == 0);
}

}  // namespace
}  // namespace pqkv::kernels

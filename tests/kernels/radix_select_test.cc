#include "kernels/radix_select.h"

#include <algorithm>
#include <random>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/top_k.h"

namespace pqkv::kernels {
namespace {

TEST_CASE("SelectTopK equals the reference TopK, ties included", "[kernels]") {
  const uint32_t n = GENERATE(1u, 2u, 33u, 4097u, 131072u);
  const int distinct = GENERATE(1, 5, 100000);  // 1 and 5: nearly everything ties
  const bool negative = GENERATE(false, true);
  std::mt19937 rng(n * 31 + distinct);
  std::uniform_int_distribution<int> value(0, distinct - 1);
  std::vector<float> scores(n);
  for (float& s : scores) s = (negative ? -1.0f : 1.0f) * value(rng) / 7.0f;
  const uint32_t begin = n / 7, end = n - n / 9;
  for (uint32_t k : {1u, 2u, (end - begin) / 5, end - begin}) {
    if (k == 0 || k > end - begin) continue;
    std::vector<uint32_t> got(k), expected(k);
    SelectTopK(scores.data(), begin, end, k, got.data());
    TopK(scores.data(), begin, end, k, expected.data());
    REQUIRE(got == expected);
    // In position order: the same positions, ascending.
    std::vector<uint32_t> by_position(k);
    SelectTopK(scores.data(), begin, end, k, by_position.data(), TopKOrder::kPosition);
    std::sort(expected.begin(), expected.end());
    REQUIRE(by_position == expected);
  }
}

TEST_CASE("SelectTopK treats -0 and +0 as equal", "[kernels]") {
  const std::vector<float> scores = {-0.0f, 0.0f, -1.0f, -0.0f};
  std::vector<uint32_t> got(3);
  SelectTopK(scores.data(), 0, 4, 3, got.data());
  CHECK(got == std::vector<uint32_t>{0, 1, 3});
}

}  // namespace
}  // namespace pqkv::kernels

#include "kernels/top_k.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::kernels {
namespace {

std::vector<uint32_t> SortedReference(const std::vector<float>& scores, uint32_t begin,
                                      uint32_t end, uint32_t k) {
  std::vector<uint32_t> positions(end - begin);
  std::iota(positions.begin(), positions.end(), begin);
  std::stable_sort(positions.begin(), positions.end(),
                   [&](uint32_t a, uint32_t b) { return scores[a] > scores[b]; });
  positions.resize(k);
  return positions;
}

TEST_CASE("TopK equals a full sort, ties broken by lower position", "[kernels]") {
  const uint32_t n = GENERATE(1u, 2u, 100u, 4099u);
  const int distinct = GENERATE(3, 1000000);  // few distinct values: many ties
  std::mt19937 rng(n + distinct);
  std::uniform_int_distribution<int> value(0, distinct - 1);
  std::vector<float> scores(n);
  for (float& s : scores) s = static_cast<float>(value(rng));
  const uint32_t begin = n / 10;
  const uint32_t end = n - n / 10;
  for (uint32_t k : {1u, (end - begin) / 2 + 1, end - begin}) {
    if (k == 0 || k > end - begin) continue;
    std::vector<uint32_t> got(k);
    TopK(scores.data(), begin, end, k, got.data());
    REQUIRE(got == SortedReference(scores, begin, end, k));
  }
}

TEST_CASE("TopK never selects outside [begin, end)", "[kernels]") {
  std::vector<float> scores = {100, 1, 2, 3, 100};
  std::vector<uint32_t> got(3);
  TopK(scores.data(), 1, 4, 3, got.data());
  CHECK(got == std::vector<uint32_t>{3, 2, 1});
}

}  // namespace
}  // namespace pqkv::kernels

#include "quality/selection_methods.h"

#include <algorithm>
#include <set>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::quality {
namespace {

TEST_CASE("OracleSelection takes the k best candidates, ties to the lower position", "[quality]") {
  std::vector<float> score(20, 0.1f);
  score[3] = 5;  // a sink, outside the candidates
  score[7] = 3;
  score[12] = 4;
  score[15] = 2;  // outside [4, 14)
  CHECK(OracleSelection(score, 4, 14, 2) == std::vector<uint32_t>{7, 12});
  CHECK(OracleSelection(score, 4, 14, 3) == std::vector<uint32_t>{4, 7, 12});
}

TEST_CASE("StreamingSelection extends the recent window", "[quality]") {
  CHECK(StreamingSelection(4, 100, 3) == std::vector<uint32_t>{97, 98, 99});
}

TEST_CASE("QuestSelection picks the page whose key bound matches the query", "[quality]") {
  const uint32_t dim = 4, n = 96;
  std::vector<float> keys(n * dim, 0.0f);
  // Token 53 (page 3 of 16-token pages) has a key along the query.
  for (uint32_t i = 0; i < dim; ++i) keys[53 * dim + i] = 1.0f;
  const std::vector<float> query = {3, 3, 3, 3};
  const std::vector<uint32_t> picked = QuestSelection(keys.data(), query.data(), 1, dim, 8, 90, 16);
  REQUIRE(picked.size() == 16);
  CHECK(picked.front() == 48);
  CHECK(picked.back() == 63);
  // A budget that ends inside a page cuts it; edge pages only hold candidates.
  const std::vector<uint32_t> cut = QuestSelection(keys.data(), query.data(), 1, dim, 50, 90, 5);
  CHECK(cut == std::vector<uint32_t>{50, 51, 52, 53, 54});
}

TEST_CASE("RandomSelection draws k distinct candidates, reproducibly", "[quality]") {
  const std::vector<uint32_t> a = RandomSelection(10, 1000, 100, 5);
  CHECK(a == RandomSelection(10, 1000, 100, 5));
  CHECK(a != RandomSelection(10, 1000, 100, 6));
  CHECK(std::set<uint32_t>(a.begin(), a.end()).size() == 100);
  CHECK(std::is_sorted(a.begin(), a.end()));
  CHECK(a.front() >= 10);
  CHECK(a.back() < 1000);
}

}  // namespace
}  // namespace pqkv::quality

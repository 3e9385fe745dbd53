#include "server/index/exact_rerank.h"

#include <algorithm>
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
  explicit Keys(size_t n) {
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    keys.resize(n * kDim);
    for (float& x : keys) x = normal(rng);
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
  const HeadSelection got = RerankExact(exact, queries.data(), 3, begin, end, all, k);
  REQUIRE(got.positions.size() == k);
  CHECK(got.positions == want.positions);
  for (uint32_t i = 0; i < k; ++i) CHECK(got.scores[i] == Approx(want.scores[i]).epsilon(1e-4));

  SECTION("fewer candidates: the best of them by exact score, best first") {
    const HeadSelection some = ScoreAndSelect(pq, queries.data(), 3, begin, end, 4 * k);
    const HeadSelection refined = RerankExact(exact, queries.data(), 3, begin, end, some, k);
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

}  // namespace
}  // namespace pqkv::server

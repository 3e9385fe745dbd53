#include "kernels/code_select.h"

#include <algorithm>
#include <random>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/pq_code_store.h"
#include "kernels/radix_select.h"

namespace pqkv::kernels {
namespace {

// SelectTopKByCode against SelectTopK over the per-token scores it stands for.
TEST_CASE("SelectTopKByCode equals SelectTopK over every token's score, ties included",
          "[kernels]") {
  const uint32_t encoded = GENERATE(1u, 300u, 5000u, 40000u);
  const uint32_t num_exact = GENERATE(0u, 1u, 70u);
  const int levels = GENERATE(3, 200, 1 << 20);  // 3: most codes tie
  const bool one_append = GENERATE(true, false);
  std::mt19937 rng(encoded * 7 + num_exact * 13 + levels);
  // Skewed codes (a few popular ones), as real keys give.
  std::geometric_distribution<int> skewed(0.002);
  std::vector<uint8_t> codes(static_cast<size_t>(encoded) * 2);
  for (uint32_t t = 0; t < encoded; ++t) {
    const int joined = std::min(skewed(rng), 4095);
    codes[2 * t] = static_cast<uint8_t>(joined & 63);
    codes[2 * t + 1] = static_cast<uint8_t>(joined >> 6);
  }
  PqCodeStore store(2, 6);
  if (one_append) {
    store.Append(codes.data(), encoded);
  } else {  // a prefill, then decode tokens one at a time: some are not listed yet
    const uint32_t prefill = encoded - encoded / 5;
    store.Append(codes.data(), prefill);
    for (uint32_t t = prefill; t < encoded; ++t) store.Append(codes.data() + 2 * t, 1);
  }
  REQUIRE(store.listed() <= store.size());
  std::uniform_int_distribution<int> level(0, levels - 1);
  std::vector<float> code_scores(store.joined_size()), exact_scores(num_exact);
  for (float& s : code_scores) s = level(rng) / 7.0f;
  for (float& s : exact_scores) s = level(rng) / 7.0f;
  const uint32_t n = encoded + num_exact;
  std::vector<float> scores(n);
  for (uint32_t t = 0; t < encoded; ++t) scores[t] = code_scores[store.joined_codes()[t]];
  for (uint32_t i = 0; i < num_exact; ++i) scores[encoded + i] = exact_scores[i];
  CodeScores in;
  in.codes = &store;
  in.code_scores = code_scores.data();
  in.exact_scores = exact_scores.data();
  in.num_tokens = n;
  for (auto [begin, end] :
       {std::pair{0u, n}, std::pair{std::min(4u, n - 1), n - n / 9}, std::pair{n / 2, n}}) {
    for (uint32_t k : {1u, 2u, (end - begin) / 16, (end - begin) / 4, end - begin}) {
      if (k == 0 || k > end - begin) continue;
      std::vector<uint32_t> got(k), expected(k);
      std::vector<float> got_scores(k);
      for (TopKOrder order : {TopKOrder::kBestFirst, TopKOrder::kPosition}) {
        SelectTopKByCode(in, begin, end, k, got.data(), got_scores.data(), order);
        SelectTopK(scores.data(), begin, end, k, expected.data(), order);
        REQUIRE(got == expected);
        for (uint32_t i = 0; i < k; ++i) REQUIRE(got_scores[i] == scores[got[i]]);
      }
      SelectTopKByCode(in, begin, end, k, got.data());  // positions alone
      SelectTopK(scores.data(), begin, end, k, expected.data());
      REQUIRE(got == expected);
    }
  }
}

// Signed scores, -0 among them (it ties with +0, as OrderedKey has it): each selection's
// key mapping must agree with SelectTopK's.
TEST_CASE("SelectTopKByCode orders negative scores and ties -0 with +0", "[kernels]") {
  const uint32_t encoded = 5003;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> any_code(0, 4095), any_level(0, 4);
  std::vector<uint8_t> codes(static_cast<size_t>(encoded) * 2);
  for (uint32_t t = 0; t < encoded; ++t) {
    const int joined = any_code(rng);
    codes[2 * t] = static_cast<uint8_t>(joined & 63);
    codes[2 * t + 1] = static_cast<uint8_t>(joined >> 6);
  }
  PqCodeStore store(2, 6);
  store.Append(codes.data(), encoded);
  const float levels[] = {-0.0f, 0.0f, -1.5f, 2.0f, -3.0f};
  std::vector<float> code_scores(store.joined_size());
  for (float& s : code_scores) s = levels[any_level(rng)];
  std::vector<float> scores(encoded);
  for (uint32_t t = 0; t < encoded; ++t) scores[t] = code_scores[store.joined_codes()[t]];
  CodeScores in;
  in.codes = &store;
  in.code_scores = code_scores.data();
  in.num_tokens = encoded;
  for (uint32_t k : {700u, 1500u, 3000u, 4000u}) {  // within +2, within the zeros, below
    std::vector<uint32_t> got(k), expected(k);
    for (TopKOrder order : {TopKOrder::kBestFirst, TopKOrder::kPosition}) {
      SelectTopKByCode(in, 0, encoded, k, got.data(), nullptr, order);
      SelectTopK(scores.data(), 0, encoded, k, expected.data(), order);
      REQUIRE(got == expected);
    }
  }
}

}  // namespace
}  // namespace pqkv::kernels

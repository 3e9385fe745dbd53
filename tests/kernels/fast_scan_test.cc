#include "kernels/fast_scan.h"

#include <random>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/pq_code_store.h"

namespace pqkv::kernels {
namespace {

TEST_CASE("FastScanAccumulate sums the uint8 tables exactly", "[kernels]") {
  const int M = GENERATE(2, 8, 16, 32, 256);
  const size_t n = GENERATE(size_t{1}, size_t{32}, size_t{1000});
  const int tables = GENERATE(1, 4, 5);
  std::mt19937 rng(M + n + tables);
  std::uniform_int_distribution<int> code(0, 15), entry(0, 255);
  std::vector<uint8_t> codes(n * M);
  for (uint8_t& c : codes) c = static_cast<uint8_t>(code(rng));
  PqCodeStore store(M, 4);
  store.Append(codes.data(), n);
  std::vector<uint8_t> q(static_cast<size_t>(tables) * M * 16);
  for (uint8_t& v : q) v = static_cast<uint8_t>(entry(rng));
  const size_t padded = store.num_blocks() * 32;
  std::vector<uint16_t> fast(tables * padded), portable(tables * padded);
  FastScanAccumulate(store.fast_scan_blocks(), store.num_blocks(), M, q.data(), tables, fast.data(),
                     padded);
  FastScanAccumulatePortable(store.fast_scan_blocks(), store.num_blocks(), M, q.data(), tables,
                             portable.data(), padded);
  for (int g = 0; g < tables; ++g) {
    for (size_t t = 0; t < n; ++t) {
      uint32_t expected = 0;
      for (int m = 0; m < M; ++m) expected += q[(g * M + m) * 16 + codes[t * M + m]];
      REQUIRE(fast[g * padded + t] == expected);
      REQUIRE(portable[g * padded + t] == expected);
    }
  }
}

TEST_CASE("QuantizeTable keeps every entry within half a step", "[kernels]") {
  const int M = 8;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> table(M * 16);
  for (float& v : table) v = normal(rng);
  std::vector<uint8_t> q(M * 16);
  const QuantizedTable params = QuantizeTable(table.data(), M, q.data());
  float bias_sum = 0;
  for (int m = 0; m < M; ++m) {
    const float lo = *std::min_element(table.begin() + m * 16, table.begin() + (m + 1) * 16);
    bias_sum += lo;
    for (int c = 0; c < 16; ++c) {
      REQUIRE(std::abs(lo + params.scale * q[m * 16 + c] - table[m * 16 + c]) <=
              params.scale * 0.5f + 1e-5f);
    }
  }
  CHECK(params.offset == Approx(bias_sum));
}

}  // namespace
}  // namespace pqkv::kernels

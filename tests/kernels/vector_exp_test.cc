#include "kernels/vector_exp.h"

#include <cmath>
#include <random>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::kernels {
namespace {

// Tolerance 1e-5: the argument scale * x - shift is rounded to float before the
// exponential, which alone costs |argument| x 6e-8 of relative error.
TEST_CASE("ExpAndSum matches std::exp within float accuracy", "[kernels]") {
  // Lengths around the 16- (AVX2) and 32-element (AVX-512) loops' tails.
  const size_t n =
      GENERATE(size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{31}, size_t{33}, size_t{1000});
  std::mt19937 rng(static_cast<uint32_t>(n));
  std::uniform_real_distribution<float> value(-60.0f, 10.0f);
  std::vector<float> x(n);
  for (float& v : x) v = value(rng);
  std::vector<float> fast(n), portable(n);
  const double fast_sum = ExpAndSum(x.data(), n, 0.5f, 1.0f, fast.data());
  const double portable_sum = ExpAndSumPortable(x.data(), n, 0.5f, 1.0f, portable.data());
  for (size_t i = 0; i < n; ++i) {
    REQUIRE(fast[i] == Approx(std::exp(0.5 * x[i] - 1.0)).epsilon(1e-5));
    REQUIRE(portable[i] == Approx(std::exp(0.5 * x[i] - 1.0)).epsilon(1e-6));
  }
  CHECK(fast_sum == Approx(portable_sum).epsilon(1e-6));
}

TEST_CASE("ExpAndSum works in place and flushes very negative arguments", "[kernels]") {
  std::vector<float> x = {0.0f, -200.0f, 1.0f, 88.0f};
  ExpAndSum(x.data(), x.size(), 1.0f, 0.0f, x.data());
  CHECK(x[0] == Approx(1.0f));
  CHECK(x[1] < 1e-37f);
  CHECK(x[2] == Approx(std::exp(1.0f)));
  CHECK(std::isfinite(x[3]));
}

// The per-dimension scan's form: integer logits, a scale and the shift of the largest.
TEST_CASE("ExpAndSumInt32 matches std::exp of the scaled integers", "[kernels]") {
  const size_t n = GENERATE(size_t{0}, size_t{1}, size_t{17}, size_t{32}, size_t{47}, size_t{512});
  std::mt19937 rng(static_cast<uint32_t>(n) + 7);
  std::uniform_int_distribution<int32_t> value(-160000, 200000);  // arguments -80 .. 10
  std::vector<int32_t> x(n);
  for (int32_t& v : x) v = value(rng);
  const float scale = 2.5e-4f, shift = 40.0f;
  std::vector<float> out(n + 1, -1.0f);
  const double sum = ExpAndSumInt32(x.data(), n, scale, shift, out.data());
  double want_sum = 0;
  for (size_t i = 0; i < n; ++i) {
    const double want = std::exp(static_cast<double>(scale * static_cast<float>(x[i]) - shift));
    REQUIRE(out[i] == Approx(want).epsilon(1e-5));
    want_sum += want;
  }
  CHECK(sum == Approx(want_sum).epsilon(1e-5));
  CHECK(out[n] == -1.0f);  // nothing written past n
}

TEST_CASE("MaxOfInt32 finds the largest element", "[kernels]") {
  for (size_t n : {1, 7, 16, 31, 33, 1000}) {
    std::vector<int32_t> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = -static_cast<int32_t>((i * 7919) % n) - 5;
    CHECK(MaxOfInt32(x.data(), n) == x[0]);
    x[n - 1] = 3;
    CHECK(MaxOfInt32(x.data(), n) == 3);
    x[n / 3] = 2000000000;
    CHECK(MaxOfInt32(x.data(), n) == 2000000000);
  }
}

TEST_CASE("MaxOf finds the largest element", "[kernels]") {
  for (size_t n : {1, 7, 16, 33, 1000}) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = -static_cast<float>((i * 7919) % n);
    x[n / 3] = 5.0f;
    CHECK(MaxOf(x.data(), n) == 5.0f);
  }
}

TEST_CASE("AddScaled adds the scaled values, tails included", "[kernels]") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  for (size_t n : {0, 1, 7, 8, 9, 33, 1000}) {
    std::vector<float> x(n), out(n), before(n);
    for (size_t i = 0; i < n; ++i) {
      x[i] = uniform(rng);
      out[i] = before[i] = uniform(rng);
    }
    AddScaled(x.data(), n, 0.37f, out.data());
    for (size_t i = 0; i < n; ++i) {
      INFO("n " << n << ", i " << i);
      // One rounding or two: within an ulp or so of the sum's magnitude.
      CHECK(out[i] == Approx(before[i] + 0.37 * x[i]).margin(1e-6));
    }
  }
}

}  // namespace
}  // namespace pqkv::kernels

namespace pqkv::kernels {
namespace {

TEST_CASE("ExpAndSumGrouped shifts and sums each column", "[kernels]") {
  const int group = GENERATE(1, 2, 3, 4, 8);
  const size_t rows = GENERATE(size_t{1}, size_t{5}, size_t{300});
  std::mt19937 rng(group * 1000 + static_cast<int>(rows));
  std::uniform_real_distribution<float> value(-30.0f, 5.0f);
  std::vector<float> x(rows * group), shifts(group);
  for (float& v : x) v = value(rng);
  for (int g = 0; g < group; ++g) shifts[g] = 0.25f * g;
  std::vector<float> out(x.size());
  std::vector<double> sums(group, 1.0);  // added to, not overwritten
  ExpAndSumGrouped(x.data(), rows, group, 0.5f, shifts.data(), out.data(), sums.data());
  std::vector<double> expected(group, 1.0);
  for (size_t r = 0; r < rows; ++r) {
    for (int g = 0; g < group; ++g) {
      const double e = std::exp(0.5 * x[r * group + g] - shifts[g]);
      INFO("group " << group << " rows " << rows << " r " << r << " g " << g);
      REQUIRE(out[r * group + g] == Approx(e).epsilon(1e-5));
      expected[g] += e;
    }
  }
  for (int g = 0; g < group; ++g) CHECK(sums[g] == Approx(expected[g]).epsilon(1e-6));
}

}  // namespace
}  // namespace pqkv::kernels

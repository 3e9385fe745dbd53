#include "kernels/vector_exp.h"

#include <cmath>
#include <random>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::kernels {
namespace {

TEST_CASE("ExpAndSum matches std::exp within float accuracy", "[kernels]") {
  const size_t n = GENERATE(size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{1000});
  std::mt19937 rng(static_cast<uint32_t>(n));
  std::uniform_real_distribution<float> value(-60.0f, 10.0f);
  std::vector<float> x(n);
  for (float& v : x) v = value(rng);
  std::vector<float> fast(n), portable(n);
  const double fast_sum = ExpAndSum(x.data(), n, 0.5f, 1.0f, fast.data());
  const double portable_sum = ExpAndSumPortable(x.data(), n, 0.5f, 1.0f, portable.data());
  for (size_t i = 0; i < n; ++i) {
    REQUIRE(fast[i] == Approx(std::exp(0.5 * x[i] - 1.0)).epsilon(1e-6));
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

TEST_CASE("MaxOf finds the largest element", "[kernels]") {
  for (size_t n : {1, 7, 16, 33, 1000}) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = -static_cast<float>((i * 7919) % n);
    x[n / 3] = 5.0f;
    CHECK(MaxOf(x.data(), n) == 5.0f);
  }
}

}  // namespace
}  // namespace pqkv::kernels

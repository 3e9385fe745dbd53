#include "kernels/gqa_softmax.h"

#include <cmath>
#include <numeric>
#include <vector>

#include "catch2/catch.hpp"

namespace pqkv::kernels {
namespace {

TEST_CASE("AccumulateSoftmax adds one softmax per query head", "[kernels]") {
  const std::vector<float> head_a = {0, 1, 2, 3};
  const std::vector<float> head_b = {3, 2, 1, 0};
  std::vector<float> acc(4, 0.0f);
  const float scale = 0.5f;
  AccumulateSoftmax(head_a.data(), 4, scale, acc.data());
  AccumulateSoftmax(head_b.data(), 4, scale, acc.data());

  double za = 0, zb = 0;
  for (int t = 0; t < 4; ++t) {
    za += std::exp(scale * head_a[t]);
    zb += std::exp(scale * head_b[t]);
  }
  for (int t = 0; t < 4; ++t) {
    const double expected = std::exp(scale * head_a[t]) / za + std::exp(scale * head_b[t]) / zb;
    CHECK(acc[t] == Approx(expected).epsilon(1e-6));
  }
  // Each head contributes a distribution: the group's scores sum to the group size.
  CHECK(std::accumulate(acc.begin(), acc.end(), 0.0) == Approx(2.0).epsilon(1e-6));
}

TEST_CASE("AccumulateSoftmax is stable for large logits", "[kernels]") {
  const std::vector<float> logits = {1000, 1000, -1000};
  std::vector<float> acc(3, 0.0f);
  AccumulateSoftmax(logits.data(), 3, 1.0f, acc.data());
  CHECK(acc[0] == Approx(0.5));
  CHECK(acc[1] == Approx(0.5));
  CHECK(acc[2] == 0.0f);
}

}  // namespace
}  // namespace pqkv::kernels

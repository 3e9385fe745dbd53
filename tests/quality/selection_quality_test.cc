#include "quality/selection_quality.h"

#include <cmath>
#include <vector>

#include "catch2/catch.hpp"
#include "quality/exact_attention.h"

namespace pqkv::quality {
namespace {

// n keys of dim 2; token `hot` has a large logit, the rest zero.
struct Trace {
  static constexpr uint32_t kDim = 2;
  uint32_t n;
  std::vector<float> keys, values;
  std::vector<float> query = {1.0f, 0.0f};
  Trace(uint32_t n_, uint32_t hot, float logit) : n(n_), keys(n_ * kDim, 0.0f), values(n_ * kDim) {
    keys[hot * kDim] = logit * std::sqrt(2.0f);  // q . k / sqrt(dim) = logit
    for (uint32_t t = 0; t < n; ++t) {
      values[t * kDim] = static_cast<float>(t);
      values[t * kDim + 1] = 1.0f;
    }
  }
};

TEST_CASE("ComputeHeadAttention is a softmax over the keys and its output", "[quality]") {
  Trace trace(10, 4, std::log(91.0f));  // token 4 weighs 91, the 9 others 1: p = 0.91
  const HeadAttention a = ComputeHeadAttention(trace.keys.data(), trace.values.data(), 10,
                                               trace.query.data(), 1, Trace::kDim);
  CHECK(a.probs[0][4] == Approx(0.91).epsilon(1e-5));
  CHECK(a.probs[0][0] == Approx(0.01).epsilon(1e-4));
  CHECK(a.gqa_score[4] == a.probs[0][4]);
  // Output: 0.91 x 4 + 0.01 x (0+1+2+3+5+6+7+8+9); second dim 1.
  CHECK(a.output[0][0] == Approx(0.91 * 4 + 0.01 * 41).epsilon(1e-5));
  CHECK(a.output[0][1] == Approx(1.0).epsilon(1e-6));
}

TEST_CASE("MeasureSelection: mass and output error of the attended set", "[quality]") {
  Trace trace(10, 4, std::log(91.0f));
  const HeadAttention a = ComputeHeadAttention(trace.keys.data(), trace.values.data(), 10,
                                               trace.query.data(), 1, Trace::kDim);
  SECTION("everything attended: no error") {
    const SelectionQuality q =
        MeasureSelection(a, trace.values.data(), Trace::kDim, 2, 8, {2, 3, 4, 5, 6, 7}, {4});
    CHECK(q.mass_recall == Approx(1.0));
    CHECK(q.output_rel_error == Approx(0.0).margin(1e-6));
    CHECK(q.recall_at_k == 1.0);
  }
  SECTION("the hot token missed") {
    const SelectionQuality q =
        MeasureSelection(a, trace.values.data(), Trace::kDim, 2, 8, {5}, {4});
    // Attended: 0, 1, 5, 8, 9 with 0.01 each.
    CHECK(q.mass_recall == Approx(0.05).epsilon(1e-4));
    CHECK(q.recall_at_k == 0.0);
    // o_S = (mean of 0,1,5,8,9 = 4.6, 1); o = (4.05, 1).
    const double want = std::hypot(4.6 - 4.05, 0.0) / std::hypot(4.05, 1.0);
    CHECK(q.output_rel_error == Approx(want).epsilon(1e-4));
  }
}

}  // namespace
}  // namespace pqkv::quality

#include "kernels/gqa_softmax.h"

#include <cmath>
#include <limits>
#include <vector>

namespace pqkv::kernels {

void AccumulateSoftmax(const float* logits, size_t n, float scale, float* acc) {
  if (n == 0) return;
  float max_logit = -std::numeric_limits<float>::infinity();
  for (size_t t = 0; t < n; ++t) max_logit = std::max(max_logit, scale * logits[t]);
  // Sum in double: n reaches 10^5-10^6 tokens.
  double sum = 0.0;
  for (size_t t = 0; t < n; ++t)
    sum += std::exp(static_cast<double>(scale * logits[t] - max_logit));
  const double inv_sum = 1.0 / sum;
  for (size_t t = 0; t < n; ++t) {
    acc[t] +=
        static_cast<float>(std::exp(static_cast<double>(scale * logits[t] - max_logit)) * inv_sum);
  }
}

}  // namespace pqkv::kernels

#include "kernels/top_k.h"

#include <algorithm>
#include <numeric>
#include <vector>

namespace pqkv::kernels {

void TopK(const float* scores, uint32_t begin, uint32_t end, uint32_t k, uint32_t* positions_out) {
  if (k == 0) return;
  std::vector<uint32_t> positions(end - begin);
  std::iota(positions.begin(), positions.end(), begin);
  const auto better = [scores](uint32_t a, uint32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  };
  std::nth_element(positions.begin(), positions.begin() + (k - 1), positions.end(), better);
  std::sort(positions.begin(), positions.begin() + k, better);
  std::copy(positions.begin(), positions.begin() + k, positions_out);
}

}  // namespace pqkv::kernels

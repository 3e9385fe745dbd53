// Top-k selection over a score array.
//
// Plain reference implementation (std::nth_element); pure function, thread-safe.
#ifndef PQKV_KERNELS_TOP_K_H_
#define PQKV_KERNELS_TOP_K_H_

#include <cstddef>
#include <cstdint>

namespace pqkv::kernels {

// Writes to positions_out the k positions in [begin, end) with the largest scores,
// best first; equal scores are ordered by lower position, so the result is unique.
// Requires k <= end - begin. scores is indexed by absolute position.
void TopK(const float* scores, uint32_t begin, uint32_t end, uint32_t k, uint32_t* positions_out);

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_TOP_K_H_

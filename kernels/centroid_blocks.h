// The centroid layout both SIMD AssignNearest kernels read (kmeans_avx2.cc: blocks of 16,
// kmeans_avx512.cc: blocks of 32): centroids transposed into blocks of kBlock,
// [k / kBlock][dim][kBlock], the last block padded with zero centroids whose norm is +inf
// (never chosen). Plain C++, included only by those kernels' files.
#ifndef PQKV_KERNELS_CENTROID_BLOCKS_H_
#define PQKV_KERNELS_CENTROID_BLOCKS_H_

#include <cstddef>
#include <limits>
#include <vector>

namespace pqkv::kernels {

struct CentroidBlocks {
  int num_blocks = 0;
  std::vector<float> blocks;  // [num_blocks][dim][kBlock]
  std::vector<float> norms;   // [num_blocks * kBlock]: ||c||^2, +inf for padding
};

// centroids fp32 [k][dim], c_norms[k] their squared norms.
template <int kBlock>
CentroidBlocks LayOutCentroidBlocks(const float* centroids, const float* c_norms, int k, int dim) {
  CentroidBlocks out;
  out.num_blocks = (k + kBlock - 1) / kBlock;
  out.blocks.assign(static_cast<size_t>(out.num_blocks) * dim * kBlock, 0.0f);
  out.norms.assign(static_cast<size_t>(out.num_blocks) * kBlock,
                   std::numeric_limits<float>::infinity());
  for (int c = 0; c < k; ++c) {
    float* block = out.blocks.data() + static_cast<size_t>(c / kBlock) * dim * kBlock + c % kBlock;
    for (int i = 0; i < dim; ++i) block[i * kBlock] = centroids[static_cast<size_t>(c) * dim + i];
    out.norms[c] = c_norms[c];
  }
  return out;
}

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_CENTROID_BLOCKS_H_

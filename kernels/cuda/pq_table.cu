// Step 1 of the layer retrieval: inner-product tables of every query head against its kv
// head's PQ codebook. Tiny next to the scan (H*G*M*ksub*dsub multiply-adds), so one
// thread per centroid, reading the query from global memory (a broadcast within a warp).
#include "kernels/cuda/retrieval_launchers.h"

namespace pqkv::kernels::cuda {
namespace {

// Grid (kv head, sub-space); thread c computes centroid c's dot product with each of the
// kv head's G query heads. __fmul_rn/__fadd_rn keep every product and sum separately
// rounded (no FMA contraction), in dimension order, as the plain reference does.
__global__ void InnerProductTablesKernel(const float* __restrict__ queries,
                                         const float* __restrict__ centroids, int group,
                                         int subspaces, int ksub, int dsub,
                                         float* __restrict__ tables) {
  const int h = blockIdx.x;
  const int m = blockIdx.y;
  const int dim = subspaces * dsub;
  for (int c = threadIdx.x; c < ksub; c += blockDim.x) {
    const float* centroid =
        centroids + ((static_cast<size_t>(h) * subspaces + m) * ksub + c) * dsub;
    for (int g = 0; g < group; ++g) {
      const int q = h * group + g;
      const float* query = queries + static_cast<size_t>(q) * dim + m * dsub;
      float dot = 0.0f;
      for (int i = 0; i < dsub; ++i) dot = __fadd_rn(dot, __fmul_rn(query[i], centroid[i]));
      tables[(static_cast<size_t>(q) * subspaces + m) * ksub + c] = dot;
    }
  }
}

}  // namespace

cudaError_t LaunchInnerProductTables(const float* queries, const float* centroids, int kv_heads,
                                     int group, int subspaces, int ksub, int dsub, float* tables,
                                     cudaStream_t stream) {
  const int threads = ksub < 32 ? 32 : (ksub > 256 ? 256 : ksub);
  InnerProductTablesKernel<<<dim3(kv_heads, subspaces), threads, 0, stream>>>(
      queries, centroids, group, subspaces, ksub, dsub, tables);
  return cudaGetLastError();
}

}  // namespace pqkv::kernels::cuda

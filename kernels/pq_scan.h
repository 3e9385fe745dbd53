// Plain (scalar) product-quantization scoring kernels: the inner-product table of a
// query against a codebook, the ADC scan over codes, and exact scoring of raw keys.
//
// These are the reference implementation and the CPU fallback; faster kernels replace
// the loops behind the same signatures and are tested against these. Pure functions,
// thread-safe, no allocation.
#ifndef PQKV_KERNELS_PQ_SCAN_H_
#define PQKV_KERNELS_PQ_SCAN_H_

#include <cstddef>
#include <cstdint>

namespace pqkv::kernels {

// Shape of one codebook: `subspaces` (M) sub-spaces of `subspace_dim` dims each, with
// `centroids_per_subspace` (2^bits) centroids in each.
struct PqShape {
  int subspaces = 0;
  int centroids_per_subspace = 0;
  int subspace_dim = 0;
  int dim() const { return subspaces * subspace_dim; }
};

// table[m][c] = <query[m*dsub .. (m+1)*dsub), centroids[m][c][0 .. dsub)>.
// query: fp32 [dim]. centroids: fp32 [M][ksub][dsub] (FAISS ProductQuantizer layout).
// table: fp32 [M][ksub].
void ComputeInnerProductTable(const PqShape& shape, const float* query, const float* centroids,
                              float* table);

// out[t] = sum_m table[m][codes[t][m]] for t in [0, n).
// codes: uint8 [n][M], one byte per sub-space code.
void AdcScan(const PqShape& shape, const float* table, const uint8_t* codes, size_t n, float* out);

// out[t] = <query, keys[t]> for t in [0, n). keys: fp32 [n][dim].
void ExactScores(const float* query, const float* keys, size_t n, int dim, float* out);

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_PQ_SCAN_H_

// PqCodebook: the product-quantization codebook of one (layer, kv head), trained with
// FAISS k-means, and the encoder that gives a key its M one-byte codes.
//
// Optionally k-means sees the key dimensions reordered (RoPE pairs), which costs nothing
// at query time but changes what the sub-spaces hold (docs/quality.md measures it):
// each RoPE pair (i, i + dim/2 in the Hugging Face rotate_half layout) and each band of
// neighbouring frequencies sits in one sub-space. Centroids are then in the reordered
// space: queries (and exact keys scored beside the codes) go through PermuteDims first,
// which keeps every dot product. (Subtracting the mean key was measured too and changes
// nothing: L2 k-means is translation-equivariant.)
//
// Immutable after Train, so safe to share across threads for reading and encoding.
#ifndef PQKV_SERVER_INDEX_PQ_CODEBOOK_H_
#define PQKV_SERVER_INDEX_PQ_CODEBOOK_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/pq_scan.h"

namespace faiss {
struct ProductQuantizer;
}  // namespace faiss

namespace pqkv::server {

class PqCodebook {
 public:
  // Trains M sub-space codebooks of 2^bits centroids on `keys` (fp32 [n][dim]) with
  // `iterations` Lloyd iterations from a fixed seed (same input, same codebook).
  // Needs n >= 2^bits; FAISS subsamples to 256 points per centroid. INVALID_ARGUMENT for
  // keys so large that fp32 k-means distances would overflow (about 1e18 at 64 dims per
  // sub-space: FAISS would abort the process).
  static absl::StatusOr<PqCodebook> Train(const float* keys, size_t n, int dim, int subspaces,
                                          int bits, int iterations, bool rope_pairs = false);

  // Writes the nearest centroid (L2) of each sub-space of each key: codes uint8 [n][M].
  // FAISS's encoder (BLAS for large n); exact ties go to the lower centroid.
  void Encode(const float* keys, size_t n, uint8_t* codes) const;

  const kernels::PqShape& shape() const { return shape_; }
  // Centroids fp32 [M][2^bits][dim / M], in the order PermuteDims gives: score a query
  // by PermuteDims(q) . centroid.
  const std::vector<float>& centroids() const { return centroids_; }

  // Heap bytes the codebook holds, about: its centroids, FAISS's copy of them and the
  // dimension order.
  size_t bytes() const;

  // Whether PermuteDims reorders anything (RoPE pairs on).
  bool permutes() const { return !order_.empty(); }
  // out[j] = in[order[j]] for `rows` vectors of dim floats; a copy without RoPE pairs.
  void PermuteDims(const float* in, size_t rows, float* out) const;

 private:
  PqCodebook(kernels::PqShape shape, std::vector<float> centroids,
             std::shared_ptr<const faiss::ProductQuantizer> pq, std::vector<uint32_t> order)
      : shape_(shape),
        centroids_(std::move(centroids)),
        pq_(std::move(pq)),
        order_(std::move(order)) {}

  kernels::PqShape shape_;
  std::vector<float> centroids_;
  std::shared_ptr<const faiss::ProductQuantizer> pq_;  // the trained quantizer, for encoding
  std::vector<uint32_t> order_;                        // empty: identity
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_INDEX_PQ_CODEBOOK_H_

// PqCodebook: the product-quantization codebook of one (layer, kv head), trained with
// FAISS k-means, and the encoder that gives a key its M one-byte codes.
//
// Immutable after Train, so safe to share across threads for reading and encoding.
#ifndef PQKV_SERVER_PQ_CODEBOOK_H_
#define PQKV_SERVER_PQ_CODEBOOK_H_

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
  // Needs n >= 2^bits; FAISS subsamples to 256 points per centroid.
  static absl::StatusOr<PqCodebook> Train(const float* keys, size_t n, int dim, int subspaces,
                                          int bits, int iterations);

  // Writes the nearest centroid (L2) of each sub-space of each key: codes uint8 [n][M].
  // FAISS's encoder (BLAS for large n); exact ties go to the lower centroid.
  void Encode(const float* keys, size_t n, uint8_t* codes) const;

  const kernels::PqShape& shape() const { return shape_; }
  // Centroids fp32 [M][2^bits][dim / M].
  const std::vector<float>& centroids() const { return centroids_; }

 private:
  PqCodebook(kernels::PqShape shape, std::vector<float> centroids,
             std::shared_ptr<const faiss::ProductQuantizer> pq)
      : shape_(shape), centroids_(std::move(centroids)), pq_(std::move(pq)) {}

  kernels::PqShape shape_;
  std::vector<float> centroids_;
  std::shared_ptr<const faiss::ProductQuantizer> pq_;  // the trained quantizer, for encoding
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_PQ_CODEBOOK_H_

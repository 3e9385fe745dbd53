// PqCodebook: the product-quantization codebook of one (layer, kv head), trained with our
// own k-means (server/index/kmeans.h: AVX-512 or AVX2 assignment, a sample of keys per sub-space
// and an early stop, PqTrainOptions), and the encoder that gives a key its M one-byte codes.
// Sub-spaces of one dimension (M == dim, the per-dimension index) take 2^bits evenly
// spaced levels between the smallest and largest key value instead, encoded by rounding:
// the grid the dim4 scan needs (kernels/dim4_scan.h).
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
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/pq_scan.h"
#include "server/index/kmeans.h"

namespace pqkv::server {

// How k-means trains each sub-space (server/index/kmeans.h). The defaults are what
// LayerStore uses; docs/benchmarks.md ("Index build") measures each against time and mass
// recall.
struct PqTrainOptions {
  static constexpr size_t kDefaultKeysPerCentroid = 128;
  static constexpr size_t kDefaultMaxTrainingKeys = 16384;
  static constexpr double kDefaultStopFraction = 0.05;
  // Keys k-means trains each sub-space on (a seeded sample; every key is still encoded):
  // keys_per_centroid x 2^bits, at most max_training_keys; 0 lifts either bound (both 0:
  // all keys). 2x6: 8192 keys, 4x8: 16384 (64 per centroid). FAISS samples 256 per
  // centroid; at 32K tokens half of that measured the same mass recall (docs/benchmarks.md,
  // "Index build").
  size_t keys_per_centroid = kDefaultKeysPerCentroid;
  size_t max_training_keys = kDefaultMaxTrainingKeys;
  // Stop once an iteration changes at most this fraction of the sample's assignments (0:
  // only at convergence). At 0.05 builds run 7 of 10 iterations at 32K tokens with the
  // same mass recall (within 0.001 on every data set of docs/benchmarks.md).
  double stop_fraction = kDefaultStopFraction;
  // Where k-means assigns (KMeansOptions::assigner): null for the CPU. Encoding stays on
  // the CPU.
  NearestCentroidAssigner* assigner = nullptr;

  // The sample size for 2^bits centroids; 0: every key.
  size_t TrainingKeys(size_t centroids) const;
};

class PqCodebook {
 public:
  // Trains M sub-space codebooks of 2^bits centroids on `keys` (fp32 [n][dim]) with at
  // most `iterations` Lloyd iterations from a fixed seed (same input, same codebook).
  // Needs n >= 2^bits. INVALID_ARGUMENT for keys so large that fp32 k-means distances
  // would overflow (about 1e18 at 64 dims per sub-space).
  static absl::StatusOr<PqCodebook> Train(const float* keys, size_t n, int dim, int subspaces,
                                          int bits, int iterations, bool rope_pairs = false,
                                          const PqTrainOptions& options = PqTrainOptions());

  // Writes the nearest centroid (L2) of each sub-space of each key: codes uint8 [n][M].
  // kernels/kmeans.h's AssignNearest, exact ties to the lower centroid; for one-dimension
  // sub-spaces, rounding to the nearest level (ties to the upper).
  void Encode(const float* keys, size_t n, uint8_t* codes) const;

  // Squared reconstruction error |k - k^|^2 of `keys` (fp32 [n][dim]) from their `codes`
  // (Encode's), summed over the keys: LayerStore's drift signal (keys unlike the training
  // set's reconstruct worse, and the error of a score q . k^ grows with |k - k^|).
  double SquaredError(const float* keys, size_t n, const uint8_t* codes) const;

  // Lloyd iterations the training ran, the most over sub-spaces (for benchmarks); 0 for
  // one-dimension sub-spaces.
  int iterations_run() const { return iterations_run_; }

  const kernels::PqShape& shape() const { return shape_; }
  // Centroids fp32 [M][2^bits][dim / M], in the order PermuteDims gives: score a query
  // by PermuteDims(q) . centroid.
  const std::vector<float>& centroids() const { return centroids_; }

  // Heap bytes the codebook holds: its centroids, their squared norms and the dimension
  // order.
  size_t bytes() const;

  // Whether PermuteDims reorders anything (RoPE pairs on).
  bool permutes() const { return !order_.empty(); }
  // out[j] = in[order[j]] for `rows` vectors of dim floats; a copy without RoPE pairs.
  void PermuteDims(const float* in, size_t rows, float* out) const;

 private:
  PqCodebook(kernels::PqShape shape, std::vector<float> centroids, std::vector<uint32_t> order,
             int iterations_run);

  kernels::PqShape shape_;
  std::vector<float> centroids_;
  std::vector<float> norms_;     // ||centroid||^2, [M][2^bits]
  std::vector<uint32_t> order_;  // empty: identity
  int iterations_run_ = 0;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_INDEX_PQ_CODEBOOK_H_

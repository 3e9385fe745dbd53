// TrainKMeans: Lloyd k-means on fp32 points, the PQ codebook trainer
// (server/index/pq_codebook.h).
//
// Trains on a sample of at most max_points_per_centroid x k points (all of them when there
// are fewer, or when max_points_per_centroid is 0), drawn with a fixed seed; starts from k
// sampled points (k different rows); each iteration assigns every sampled point to its
// nearest centroid (kernels/kmeans.h, AVX-512 or AVX2) and moves each centroid to the mean of its
// points. A centroid left with no points takes half of a populous cluster (FAISS's split:
// a copy of that centroid, perturbed by +-1/1024 in alternate directions). Stops after
// max_iterations, or earlier once an iteration changes at most stop_fraction of the
// assignments (0: only when none change, i.e. converged).
//
// The assignments run on the CPU (kernels/kmeans.h), or through options.assigner
// (a GPU: GpuScorer::NewKMeansAssigner); an assigner that fails hands the rest of the
// iterations back to the CPU, and the result says so.
//
// Pure function of its inputs (same input, same centroids, up to the rounding of the
// assigner's dot products); thread-safe.
#ifndef PQKV_SERVER_INDEX_KMEANS_H_
#define PQKV_SERVER_INDEX_KMEANS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace pqkv::server {

// The assignment step somewhere other than this thread's CPU kernels: one set of points,
// then the nearest of each iteration's centroids for every point, as
// kernels::AssignNearest defines it. One object per thread.
class NearestCentroidAssigner {
 public:
  virtual ~NearestCentroidAssigner() = default;
  // The points of the Assign calls that follow: fp32 [n][dim], contiguous.
  virtual absl::Status SetPoints(const float* points, size_t n, int dim) = 0;
  // assign[n] for those points against k centroids (fp32 [k][dim]) with squared norms
  // c_norms[k].
  virtual absl::Status Assign(const float* centroids, const float* c_norms, int k,
                              uint32_t* assign) = 0;
};

struct KMeansOptions {
  int max_iterations = 10;
  size_t max_points_per_centroid = 256;  // FAISS's default
  double stop_fraction = 0;
  uint64_t seed = 1234;
  NearestCentroidAssigner* assigner = nullptr;  // null: the CPU kernels
};

struct KMeansResult {
  std::vector<float> centroids;  // fp32 [k][dim]
  int iterations = 0;            // Lloyd iterations run
  size_t sample_size = 0;        // points trained on
  int assigner_iterations = 0;   // iterations whose assignment options.assigner made
  absl::Status assigner_error;   // why the assigner stopped early (the CPU went on)
};

// points: row r at points + r * stride, dim floats. Requires n >= k >= 1, dim >= 1.
KMeansResult TrainKMeans(const float* points, size_t n, int dim, size_t stride, int k,
                         const KMeansOptions& options);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_INDEX_KMEANS_H_

// TrainKMeans: Lloyd k-means on fp32 points, the PQ codebook trainer
// (server/index/pq_codebook.h).
//
// Trains on a sample of at most max_points_per_centroid x k points (all of them when there
// are fewer, or when max_points_per_centroid is 0), drawn with a fixed seed; starts from k
// sampled points (k different rows); each iteration assigns every sampled point to its
// nearest centroid (kernels/kmeans.h, AVX2) and moves each centroid to the mean of its
// points. A centroid left with no points takes half of a populous cluster (FAISS's split:
// a copy of that centroid, perturbed by +-1/1024 in alternate directions). Stops after
// max_iterations, or earlier once an iteration changes at most stop_fraction of the
// assignments (0: only when none change, i.e. converged).
//
// Pure function of its inputs (same input, same centroids); thread-safe.
#ifndef PQKV_SERVER_INDEX_KMEANS_H_
#define PQKV_SERVER_INDEX_KMEANS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pqkv::server {

struct KMeansOptions {
  int max_iterations = 10;
  size_t max_points_per_centroid = 256;  // FAISS's default
  double stop_fraction = 0;
  uint64_t seed = 1234;
};

struct KMeansResult {
  std::vector<float> centroids;  // fp32 [k][dim]
  int iterations = 0;            // Lloyd iterations run
  size_t sample_size = 0;        // points trained on
};

// points: row r at points + r * stride, dim floats. Requires n >= k >= 1, dim >= 1.
KMeansResult TrainKMeans(const float* points, size_t n, int dim, size_t stride, int k,
                         const KMeansOptions& options);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_INDEX_KMEANS_H_

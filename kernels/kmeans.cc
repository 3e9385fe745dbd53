#include "kernels/kmeans.h"

#include "kernels/cpu_features.h"
#include "kernels/simd_avx2.h"
#include "kernels/simd_avx512.h"

namespace pqkv::kernels {

void CentroidNorms(const float* centroids, int k, int dim, float* c_norms) {
  for (int c = 0; c < k; ++c) {
    const float* row = centroids + static_cast<size_t>(c) * dim;
    float sum = 0;
    for (int i = 0; i < dim; ++i) sum += row[i] * row[i];
    c_norms[c] = sum;
  }
}

void AssignNearestPortable(const float* points, size_t n, int dim, size_t stride,
                           const float* centroids, const float* c_norms, int k, uint32_t* assign,
                           float* distances) {
  for (size_t r = 0; r < n; ++r) {
    const float* x = points + r * stride;
    float best = 0;
    uint32_t best_c = 0;
    for (int c = 0; c < k; ++c) {
      const float* row = centroids + static_cast<size_t>(c) * dim;
      float dot = 0;
      for (int i = 0; i < dim; ++i) dot += x[i] * row[i];
      const float d = c_norms[c] - 2 * dot;
      if (c == 0 || d < best) {
        best = d;
        best_c = static_cast<uint32_t>(c);
      }
    }
    assign[r] = best_c;
    if (distances != nullptr) distances[r] = best;
  }
}

void AssignNearest(const float* points, size_t n, int dim, size_t stride, const float* centroids,
                   const float* c_norms, int k, uint32_t* assign, float* distances) {
  if (UseAvx512()) {
    avx512::AssignNearest(points, n, dim, stride, centroids, c_norms, k, assign, distances);
    return;
  }
  if (UseAvx2()) {
    avx2::AssignNearest(points, n, dim, stride, centroids, c_norms, k, assign, distances);
    return;
  }
  AssignNearestPortable(points, n, dim, stride, centroids, c_norms, k, assign, distances);
}

}  // namespace pqkv::kernels

#include "server/pq_codebook.h"

#include <faiss/impl/FaissException.h>
#include <faiss/impl/ProductQuantizer.h>

#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pqkv {

absl::StatusOr<PqCodebook> PqCodebook::Train(const float* keys, size_t n, int dim, int subspaces,
                                             int bits, int iterations) {
  if (subspaces <= 0 || dim % subspaces != 0 || bits < 1 || bits > 8 || iterations < 1) {
    return absl::InvalidArgumentError(absl::StrCat("bad PQ shape: dim ", dim, ", subspaces ",
                                                   subspaces, ", bits ", bits, ", iterations ",
                                                   iterations));
  }
  const size_t ksub = size_t{1} << bits;
  if (n < ksub) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot train ", ksub, " centroids on ", n, " keys"));
  }
  try {
    faiss::ProductQuantizer pq(dim, subspaces, bits);
    pq.cp.niter = iterations;
    pq.cp.seed = 1234;
    // Short prefills are legitimate here; FAISS would warn below 39 points per centroid.
    pq.cp.min_points_per_centroid = 1;
    pq.verbose = false;
    pq.train(static_cast<faiss::Index::idx_t>(n), keys);
    kernels::PqShape shape{subspaces, static_cast<int>(ksub), dim / subspaces};
    return PqCodebook(shape, std::vector<float>(pq.centroids.begin(), pq.centroids.end()));
  } catch (const faiss::FaissException& e) {
    return absl::InternalError(absl::StrCat("FAISS k-means failed: ", e.what()));
  }
}

void PqCodebook::Encode(const float* keys, size_t n, uint8_t* codes) const {
  const int M = shape_.subspaces;
  const int ksub = shape_.centroids_per_subspace;
  const int dsub = shape_.subspace_dim;
  for (size_t t = 0; t < n; ++t) {
    const float* key = keys + t * shape_.dim();
    for (int m = 0; m < M; ++m) {
      const float* x = key + m * dsub;
      float best = std::numeric_limits<float>::infinity();
      int best_c = 0;
      for (int c = 0; c < ksub; ++c) {
        const float* centroid = centroids_.data() + (static_cast<size_t>(m) * ksub + c) * dsub;
        float dist = 0.0f;
        for (int i = 0; i < dsub; ++i) {
          const float diff = x[i] - centroid[i];
          dist += diff * diff;
        }
        if (dist < best) {
          best = dist;
          best_c = c;
        }
      }
      codes[t * M + m] = static_cast<uint8_t>(best_c);
    }
  }
}

}  // namespace pqkv

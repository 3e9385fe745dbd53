#include "server/index/pq_codebook.h"

#include <faiss/impl/FaissException.h>
#include <faiss/impl/ProductQuantizer.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

extern "C" void openblas_set_num_threads(int threads);

namespace pqkv::server {

namespace {

// Dimension order that puts RoPE pair i = (i, i + dim/2) at (2i, 2i + 1): contiguous
// sub-spaces then hold whole pairs, low pair indices (high frequencies) first.
std::vector<uint32_t> RopePairOrder(int dim) {
  std::vector<uint32_t> order(dim);
  for (int i = 0; i < dim / 2; ++i) {
    order[2 * i] = i;
    order[2 * i + 1] = i + dim / 2;
  }
  return order;
}

}  // namespace

size_t PqCodebook::bytes() const {
  size_t floats = centroids_.capacity();
  if (pq_ != nullptr) {
    floats += pq_->centroids.capacity() + pq_->transposed_centroids.capacity() +
              pq_->centroids_sq_lengths.capacity() + pq_->sdc_table.capacity();
  }
  return floats * sizeof(float) + order_.capacity() * sizeof(uint32_t);
}

void PqCodebook::PermuteDims(const float* in, size_t rows, float* out) const {
  const size_t dim = static_cast<size_t>(shape_.subspaces) * shape_.subspace_dim;
  if (order_.empty()) {
    std::copy(in, in + rows * dim, out);
    return;
  }
  for (size_t r = 0; r < rows; ++r) {
    for (size_t j = 0; j < dim; ++j) out[r * dim + j] = in[r * dim + order_[j]];
  }
}

absl::StatusOr<PqCodebook> PqCodebook::Train(const float* keys, size_t n, int dim, int subspaces,
                                             int bits, int iterations, bool rope_pairs) {
  if (subspaces <= 0 || dim % subspaces != 0 || bits < 1 || bits > 8 || iterations < 1) {
    return absl::InvalidArgumentError(absl::StrCat("bad PQ shape: dim ", dim, ", subspaces ",
                                                   subspaces, ", bits ", bits, ", iterations ",
                                                   iterations));
  }
  if (rope_pairs && dim % (2 * subspaces) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RoPE pairs need dim ", dim, " to be a multiple of 2 x subspaces ", subspaces));
  }
  const size_t ksub = size_t{1} << bits;
  if (n < ksub) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot train ", ksub, " centroids on ", n, " keys"));
  }
  // k-means compares squared L2 distances in fp32: |x|^2 + |c|^2 - 2 x.c over a sub-space's
  // dim / M elements, each term at most (dim / M) max|x|^2 (centroids are means of keys). Past
  // that every distance is infinite, FAISS assigns a point no centroid and its assertion
  // aborts the process: refuse such keys (the layer is then scored exactly).
  const size_t subspace_dim = static_cast<size_t>(dim / subspaces);
  const float limit = std::sqrt(std::numeric_limits<float>::max() / (8.0f * subspace_dim));
  float max_abs = 0;
  for (size_t i = 0; i < n * static_cast<size_t>(dim); ++i) {
    max_abs = std::max(max_abs, std::fabs(keys[i]));
  }
  if (!(max_abs <= limit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys up to ", max_abs, " in magnitude: k-means distances over ", subspace_dim,
                     " dims would overflow fp32 (largest trainable magnitude ", limit, ")"));
  }
  // Training runs on background threads beside retrievals. FAISS's OpenMP team and
  // OpenBLAS's threads spin while they wait; on a few cores they would starve both the
  // retrievals and each other (measured: 14 s instead of 0.5 s for one 32K-token layer).
  static std::once_flag single_threaded_blas;
  std::call_once(single_threaded_blas, [] { openblas_set_num_threads(1); });
  omp_set_num_threads(1);  // this thread's OpenMP regions only
  kernels::PqShape shape{subspaces, static_cast<int>(ksub), dim / subspaces};
  std::vector<uint32_t> order = rope_pairs ? RopePairOrder(dim) : std::vector<uint32_t>();
  std::vector<float> reordered;
  if (!order.empty()) {
    reordered.resize(n * dim);
    for (size_t t = 0; t < n; ++t) {
      for (int j = 0; j < dim; ++j) reordered[t * dim + j] = keys[t * dim + order[j]];
    }
    keys = reordered.data();
  }
  try {
    auto pq = std::make_shared<faiss::ProductQuantizer>(dim, subspaces, bits);
    pq->cp.niter = iterations;
    pq->cp.seed = 1234;
    // Short prefills are legitimate here; FAISS would warn below 39 points per centroid.
    pq->cp.min_points_per_centroid = 1;
    pq->verbose = false;
    pq->train(static_cast<faiss::Index::idx_t>(n), keys);
    std::vector<float> centroids(pq->centroids.begin(), pq->centroids.end());
    return PqCodebook(shape, std::move(centroids), std::move(pq), std::move(order));
  } catch (const faiss::FaissException& e) {
    return absl::InternalError(absl::StrCat("FAISS k-means failed: ", e.what()));
  }
}

void PqCodebook::Encode(const float* keys, size_t n, uint8_t* codes) const {
  omp_set_num_threads(1);  // see Train: this runs beside retrievals
  const int M = shape_.subspaces;
  // FAISS packs codes bit-tight (M x bits bits per token); unpack to one byte each.
  std::vector<uint8_t> packed(n * pq_->code_size);
  if (order_.empty()) {
    pq_->compute_codes(keys, packed.data(), n);
  } else {
    std::vector<float> reordered(n * order_.size());
    PermuteDims(keys, n, reordered.data());
    pq_->compute_codes(reordered.data(), packed.data(), n);
  }
  for (size_t t = 0; t < n; ++t) {
    faiss::PQDecoderGeneric decoder(packed.data() + t * pq_->code_size, pq_->nbits);
    for (int m = 0; m < M; ++m) codes[t * M + m] = static_cast<uint8_t>(decoder.decode());
  }
}

}  // namespace pqkv::server

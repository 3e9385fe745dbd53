#include "server/pq_codebook.h"

#include <faiss/impl/FaissException.h>
#include <faiss/impl/ProductQuantizer.h>
#include <omp.h>

#include <algorithm>
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

std::vector<float> PqCodebook::Transformed(const float* keys, size_t n) const {
  const size_t dim = static_cast<size_t>(shape_.subspaces) * shape_.subspace_dim;
  std::vector<float> out(n * dim);
  PermuteDims(keys, n, out.data());
  if (!mean_.empty()) {
    for (size_t t = 0; t < n; ++t) {
      for (size_t j = 0; j < dim; ++j) out[t * dim + j] -= mean_[j];
    }
  }
  return out;
}

absl::StatusOr<PqCodebook> PqCodebook::Train(const float* keys, size_t n, int dim, int subspaces,
                                             int bits, int iterations, KeyTransform transform) {
  if (subspaces <= 0 || dim % subspaces != 0 || bits < 1 || bits > 8 || iterations < 1) {
    return absl::InvalidArgumentError(absl::StrCat("bad PQ shape: dim ", dim, ", subspaces ",
                                                   subspaces, ", bits ", bits, ", iterations ",
                                                   iterations));
  }
  if (transform.rope_pairs && dim % (2 * subspaces) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RoPE pairs need dim ", dim, " to be a multiple of 2 x subspaces ", subspaces));
  }
  const size_t ksub = size_t{1} << bits;
  if (n < ksub) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot train ", ksub, " centroids on ", n, " keys"));
  }
  // Training runs on background threads beside retrievals. FAISS's OpenMP team and
  // OpenBLAS's threads spin while they wait; on a few cores they would starve both the
  // retrievals and each other (measured: 14 s instead of 0.5 s for one 32K-token layer).
  static std::once_flag single_threaded_blas;
  std::call_once(single_threaded_blas, [] { openblas_set_num_threads(1); });
  omp_set_num_threads(1);  // this thread's OpenMP regions only
  kernels::PqShape shape{subspaces, static_cast<int>(ksub), dim / subspaces};
  std::vector<uint32_t> order = transform.rope_pairs ? RopePairOrder(dim) : std::vector<uint32_t>();
  std::vector<float> mean;
  if (transform.center) {
    std::vector<double> sum(dim, 0.0);
    for (size_t t = 0; t < n; ++t) {
      for (int j = 0; j < dim; ++j) sum[j] += keys[t * dim + (order.empty() ? j : order[j])];
    }
    mean.resize(dim);
    for (int j = 0; j < dim; ++j) mean[j] = static_cast<float>(sum[j] / static_cast<double>(n));
  }
  // A codebook without a quantizer yet, to transform the training keys.
  PqCodebook codebook(shape, {}, nullptr, std::move(order), std::move(mean));
  const std::vector<float> training = codebook.Transformed(keys, n);
  try {
    auto pq = std::make_shared<faiss::ProductQuantizer>(dim, subspaces, bits);
    pq->cp.niter = iterations;
    pq->cp.seed = 1234;
    // Short prefills are legitimate here; FAISS would warn below 39 points per centroid.
    pq->cp.min_points_per_centroid = 1;
    pq->verbose = false;
    pq->train(static_cast<faiss::Index::idx_t>(n), training.data());
    codebook.centroids_.assign(pq->centroids.begin(), pq->centroids.end());
    if (!codebook.mean_.empty()) {
      // Fold the mean back in: sub-space m's centroids each gain the mean's slice m.
      const int dsub = shape.subspace_dim;
      for (int m = 0; m < subspaces; ++m) {
        for (size_t c = 0; c < ksub; ++c) {
          float* centroid = codebook.centroids_.data() + (m * ksub + c) * dsub;
          for (int i = 0; i < dsub; ++i) centroid[i] += codebook.mean_[m * dsub + i];
        }
      }
    }
    codebook.pq_ = std::move(pq);
    return codebook;
  } catch (const faiss::FaissException& e) {
    return absl::InternalError(absl::StrCat("FAISS k-means failed: ", e.what()));
  }
}

void PqCodebook::Encode(const float* keys, size_t n, uint8_t* codes) const {
  omp_set_num_threads(1);  // see Train: this runs beside retrievals
  const int M = shape_.subspaces;
  // FAISS packs codes bit-tight (M x bits bits per token); unpack to one byte each.
  std::vector<uint8_t> packed(n * pq_->code_size);
  if (order_.empty() && mean_.empty()) {
    pq_->compute_codes(keys, packed.data(), n);
  } else {
    pq_->compute_codes(Transformed(keys, n).data(), packed.data(), n);
  }
  for (size_t t = 0; t < n; ++t) {
    faiss::PQDecoderGeneric decoder(packed.data() + t * pq_->code_size, pq_->nbits);
    for (int m = 0; m < M; ++m) codes[t * M + m] = static_cast<uint8_t>(decoder.decode());
  }
}

}  // namespace pqkv::server

#include "server/index/pq_codebook.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/kmeans.h"
#include "server/index/kmeans.h"

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
  return (centroids_.capacity() + norms_.capacity()) * sizeof(float) +
         order_.capacity() * sizeof(uint32_t);
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

PqCodebook::PqCodebook(kernels::PqShape shape, std::vector<float> centroids,
                       std::vector<uint32_t> order, int iterations_run)
    : shape_(shape),
      centroids_(std::move(centroids)),
      norms_(static_cast<size_t>(shape.subspaces) * shape.centroids_per_subspace),
      order_(std::move(order)),
      iterations_run_(iterations_run) {
  const size_t ksub = shape_.centroids_per_subspace, dsub = shape_.subspace_dim;
  for (int m = 0; m < shape_.subspaces; ++m) {
    kernels::CentroidNorms(centroids_.data() + m * ksub * dsub, static_cast<int>(ksub),
                           static_cast<int>(dsub), norms_.data() + m * ksub);
  }
}

size_t PqTrainOptions::TrainingKeys(size_t centroids) const {
  const size_t by_centroids = keys_per_centroid * centroids;
  if (by_centroids == 0) return max_training_keys;
  if (max_training_keys == 0) return by_centroids;
  return std::min(by_centroids, max_training_keys);
}

absl::StatusOr<PqCodebook> PqCodebook::Train(const float* keys, size_t n, int dim, int subspaces,
                                             int bits, int iterations, bool rope_pairs,
                                             const PqTrainOptions& options) {
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
  // that every distance is infinite and no centroid is nearest (FAISS, which trained
  // these codebooks before, aborted the process): refuse such keys (the layer is then
  // scored exactly).
  const int dsub = dim / subspaces;
  const size_t subspace_dim = static_cast<size_t>(dsub);
  const float limit = std::sqrt(std::numeric_limits<float>::max() / (8.0f * subspace_dim));
  // Sixteen running maxima: one would be a chain of dependent max operations over 4M
  // values per kv head at 32K tokens (about 6 ms), sixteen vectorise.
  constexpr size_t kLanes = 16;
  float lane_max[kLanes] = {};
  const size_t total = n * static_cast<size_t>(dim);
  size_t i = 0;
  for (; i + kLanes <= total; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) lane_max[l] = std::max(lane_max[l], std::fabs(keys[i + l]));
  }
  for (; i < total; ++i) lane_max[0] = std::max(lane_max[0], std::fabs(keys[i]));
  const float max_abs = *std::max_element(lane_max, lane_max + kLanes);
  if (!(max_abs <= limit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys up to ", max_abs, " in magnitude: k-means distances over ", subspace_dim,
                     " dims would overflow fp32 (largest trainable magnitude ", limit, ")"));
  }
  kernels::PqShape shape{subspaces, static_cast<int>(ksub), dsub};
  std::vector<uint32_t> order = rope_pairs ? RopePairOrder(dim) : std::vector<uint32_t>();
  std::vector<float> reordered;
  if (!order.empty()) {
    reordered.resize(n * dim);
    for (size_t t = 0; t < n; ++t) {
      for (int j = 0; j < dim; ++j) reordered[t * dim + j] = keys[t * dim + order[j]];
    }
    keys = reordered.data();
  }
  if (dsub == 1) {
    // One dimension per sub-space: 2^bits evenly spaced levels from the smallest to the
    // largest key value, no k-means (the per-dimension scan needs a uniform grid, and
    // docs/benchmarks.md measured k-means levels no better here).
    // Row by row: a column walk would touch every key's cache line once per dimension.
    std::vector<float> lo(keys, keys + dim), hi(keys, keys + dim);
    for (size_t t = 1; t < n; ++t) {
      const float* key = keys + t * dim;
      for (int m = 0; m < dim; ++m) {
        lo[m] = std::min(lo[m], key[m]);
        hi[m] = std::max(hi[m], key[m]);
      }
    }
    std::vector<float> centroids(static_cast<size_t>(subspaces) * ksub);
    for (int m = 0; m < subspaces; ++m) {
      const float step = (hi[m] - lo[m]) / static_cast<float>(ksub - 1);
      for (size_t c = 0; c < ksub; ++c) {
        centroids[m * ksub + c] = lo[m] + step * static_cast<float>(c);
      }
    }
    return PqCodebook(shape, std::move(centroids), std::move(order), 0);
  }
  KMeansOptions kmeans;
  kmeans.max_iterations = iterations;
  const size_t training_keys = options.TrainingKeys(ksub);
  kmeans.max_points_per_centroid = training_keys == 0 ? 0 : (training_keys + ksub - 1) / ksub;
  kmeans.stop_fraction = options.stop_fraction;
  kmeans.assigner = options.assigner;
  std::vector<float> centroids(static_cast<size_t>(subspaces) * ksub * dsub);
  int iterations_run = 0;
  for (int m = 0; m < subspaces; ++m) {
    kmeans.seed = 1234 + m;
    KMeansResult result = TrainKMeans(keys + static_cast<size_t>(m) * dsub, n, dsub, dim,
                                      static_cast<int>(ksub), kmeans);
    std::copy(result.centroids.begin(), result.centroids.end(),
              centroids.begin() + static_cast<size_t>(m) * ksub * dsub);
    iterations_run = std::max(iterations_run, result.iterations);
  }
  return PqCodebook(shape, std::move(centroids), std::move(order), iterations_run);
}

double PqCodebook::SquaredError(const float* keys, size_t n, const uint8_t* codes) const {
  const int M = shape_.subspaces, ksub = shape_.centroids_per_subspace, dsub = shape_.subspace_dim;
  const size_t dim = static_cast<size_t>(M) * dsub;
  std::vector<float> row(dim);
  double error = 0;
  for (size_t t = 0; t < n; ++t) {
    const float* key = keys + t * dim;
    if (!order_.empty()) {
      PermuteDims(key, 1, row.data());
      key = row.data();
    }
    for (int m = 0; m < M; ++m) {
      const float* centroid =
          centroids_.data() + (static_cast<size_t>(m) * ksub + codes[t * M + m]) * dsub;
      for (int i = 0; i < dsub; ++i) {
        const double d = static_cast<double>(key[m * dsub + i]) - centroid[i];
        error += d * d;
      }
    }
  }
  return error;
}

void PqCodebook::Encode(const float* keys, size_t n, uint8_t* codes) const {
  const int M = shape_.subspaces, ksub = shape_.centroids_per_subspace, dsub = shape_.subspace_dim;
  const size_t dim = static_cast<size_t>(M) * dsub;
  std::vector<float> reordered;
  if (!order_.empty()) {
    reordered.resize(n * dim);
    PermuteDims(keys, n, reordered.data());
    keys = reordered.data();
  }
  if (dsub == 1) {
    // The uniform grid of Train: the nearest level by rounding, row by row.
    std::vector<float> lo(M), inverse_step(M);
    for (int m = 0; m < M; ++m) {
      lo[m] = centroids_[static_cast<size_t>(m) * ksub];
      const float step =
          (centroids_[static_cast<size_t>(m) * ksub + ksub - 1] - lo[m]) / (ksub - 1);
      inverse_step[m] = step > 0 ? 1 / step : 0.0f;
    }
    const float top = static_cast<float>(ksub - 1);
    for (size_t t = 0; t < n; ++t) {
      const float* key = keys + t * dim;
      uint8_t* code = codes + t * M;
      for (int m = 0; m < M; ++m) {
        // Clamped before the conversion, so that far-out keys land on the end levels (a
        // NaN fails the first comparison and takes the top one).
        const float level = std::max(0.0f, std::min(top, (key[m] - lo[m]) * inverse_step[m]));
        code[m] = static_cast<uint8_t>(level + 0.5f);
      }
    }
    return;
  }
  // Blocks of 1024 keys: the assignments stay in cache between the kernel and the bytes.
  constexpr size_t kChunk = 1024;
  std::vector<uint32_t> assign(kChunk);
  for (size_t begin = 0; begin < n; begin += kChunk) {
    const size_t count = std::min(kChunk, n - begin);
    for (int m = 0; m < M; ++m) {
      kernels::AssignNearest(keys + begin * dim + static_cast<size_t>(m) * dsub, count, dsub, dim,
                             centroids_.data() + static_cast<size_t>(m) * ksub * dsub,
                             norms_.data() + static_cast<size_t>(m) * ksub, ksub, assign.data(),
                             nullptr);
      for (size_t t = 0; t < count; ++t) {
        codes[(begin + t) * M + m] = static_cast<uint8_t>(assign[t]);
      }
    }
  }
}

}  // namespace pqkv::server

#include "server/index/kmeans.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "kernels/kmeans.h"

namespace pqkv::server {

KMeansResult TrainKMeans(const float* points, size_t n, int dim, size_t stride, int k,
                         const KMeansOptions& options) {
  std::mt19937_64 rng(options.seed);
  // The sample, copied contiguous: sampled rows in their original order.
  const size_t cap = options.max_points_per_centroid * static_cast<size_t>(k);
  std::vector<uint32_t> rows(n);
  std::iota(rows.begin(), rows.end(), 0u);
  size_t ns = n;
  if (cap > 0 && n > cap) {
    ns = std::max(cap, static_cast<size_t>(k));
    for (size_t i = 0; i < ns; ++i) {  // partial Fisher-Yates
      std::uniform_int_distribution<size_t> pick(i, n - 1);
      std::swap(rows[i], rows[pick(rng)]);
    }
    rows.resize(ns);
    std::sort(rows.begin(), rows.end());
  }
  std::vector<float> x(ns * dim);
  for (size_t i = 0; i < ns; ++i) {
    std::copy(points + rows[i] * stride, points + rows[i] * stride + dim, x.data() + i * dim);
  }

  KMeansResult result;
  result.sample_size = ns;
  std::vector<float>& c = result.centroids;
  c.resize(static_cast<size_t>(k) * dim);
  {
    std::vector<uint32_t> order(ns);
    std::iota(order.begin(), order.end(), 0u);
    for (int i = 0; i < k; ++i) {
      std::uniform_int_distribution<size_t> pick(i, ns - 1);
      std::swap(order[i], order[pick(rng)]);
      std::copy(x.data() + order[i] * size_t(dim), x.data() + (order[i] + 1) * size_t(dim),
                c.data() + static_cast<size_t>(i) * dim);
    }
  }

  std::vector<float> norms(k);
  std::vector<uint32_t> assign(ns, UINT32_MAX), previous(ns);
  std::vector<float> sums(static_cast<size_t>(k) * dim);
  std::vector<size_t> counts(k);
  NearestCentroidAssigner* assigner = options.assigner;
  if (assigner != nullptr) {
    result.assigner_error = assigner->SetPoints(x.data(), ns, dim);
    if (!result.assigner_error.ok()) assigner = nullptr;
  }
  for (int it = 0; it < options.max_iterations; ++it) {
    previous.swap(assign);
    kernels::CentroidNorms(c.data(), k, dim, norms.data());
    if (assigner != nullptr) {
      result.assigner_error = assigner->Assign(c.data(), norms.data(), k, assign.data());
      if (result.assigner_error.ok()) {
        ++result.assigner_iterations;
      } else {
        assigner = nullptr;  // this iteration and the rest on the CPU
      }
    }
    if (assigner == nullptr) {
      kernels::AssignNearest(x.data(), ns, dim, dim, c.data(), norms.data(), k, assign.data(),
                             nullptr);
    }
    size_t changed = 0;
    for (size_t i = 0; i < ns; ++i) changed += assign[i] != previous[i];

    // Float sums (as FAISS keeps them), a loop over dim the compiler vectorises.
    std::fill(sums.begin(), sums.end(), 0.0f);
    std::fill(counts.begin(), counts.end(), 0);
    for (size_t i = 0; i < ns; ++i) {
      float* sum = sums.data() + static_cast<size_t>(assign[i]) * dim;
      const float* row = x.data() + i * dim;
      for (int j = 0; j < dim; ++j) sum[j] += row[j];
      ++counts[assign[i]];
    }
    for (int ci = 0; ci < k; ++ci) {
      if (counts[ci] == 0) continue;
      const float inv = 1.0f / static_cast<float>(counts[ci]);
      for (int j = 0; j < dim; ++j) {
        c[static_cast<size_t>(ci) * dim + j] = sums[static_cast<size_t>(ci) * dim + j] * inv;
      }
    }
    // Empty clusters take half of a cluster chosen with probability (size - 1) / (ns - k).
    for (int ci = 0; ci < k; ++ci) {
      if (counts[ci] != 0) continue;
      std::uniform_real_distribution<double> unit(0.0, 1.0);
      int cj = 0;
      if (ns > static_cast<size_t>(k)) {
        for (cj = 0;; cj = (cj + 1) % k) {
          const double p = (static_cast<double>(counts[cj]) - 1.0) / static_cast<double>(ns - k);
          if (unit(rng) < p) break;
        }
      } else {
        cj = static_cast<int>(std::max_element(counts.begin(), counts.end()) - counts.begin());
      }
      constexpr float kEps = 1.0f / 1024;
      for (int j = 0; j < dim; ++j) {
        const float v = c[static_cast<size_t>(cj) * dim + j];
        c[static_cast<size_t>(ci) * dim + j] = j % 2 == 0 ? v * (1 + kEps) : v * (1 - kEps);
        c[static_cast<size_t>(cj) * dim + j] = j % 2 == 0 ? v * (1 - kEps) : v * (1 + kEps);
      }
      counts[ci] = counts[cj] / 2;
      counts[cj] -= counts[ci];
    }
    result.iterations = it + 1;
    if (it > 0 && static_cast<double>(changed) <= options.stop_fraction * static_cast<double>(ns)) {
      break;
    }
  }
  return result;
}

}  // namespace pqkv::server

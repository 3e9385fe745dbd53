#include "workload/kv_statistics.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/dtype_convert.h"

namespace pqkv::workload {
namespace {

constexpr uint32_t kMaxSampleTokens = 2048;

// fp32 copy of one kv head's keys, [token][dim].
std::vector<float> HeadKeys(const KvDataSet& data, const KvLayer& layer, uint32_t kv_head) {
  const size_t count = size_t{data.num_tokens} * data.head_dim;
  std::vector<float> keys(count);
  kernels::ToFloat(kernels::ElementType::kFp16, &layer.keys[kv_head * count], count,
                   keys.data());
  return keys;
}

// fp32 dot product with 8 partial sums (vectorisable without -ffast-math).
float Dot(const float* a, const float* b, uint32_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (uint32_t l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  }
  float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + mid, v.end());
  return v[mid];
}

// Tokens needed for `target` of the mass of `p` (which it reorders): repeated halving
// with nth_element, expected O(n).
uint32_t TokensForMass(std::vector<float>& p, double target) {
  size_t begin = 0;
  size_t end = p.size();
  double acc = 0;
  uint32_t count = 0;
  while (end - begin > 32) {
    const size_t mid = begin + (end - begin) / 2;
    std::nth_element(p.begin() + begin, p.begin() + mid, p.begin() + end, std::greater<float>());
    double upper = 0;
    for (size_t i = begin; i < mid; ++i) upper += p[i];
    if (acc + upper >= target) {
      end = mid;
    } else {
      acc += upper;
      count += static_cast<uint32_t>(mid - begin);
      begin = mid;
    }
  }
  std::sort(p.begin() + begin, p.begin() + end, std::greater<float>());
  for (size_t i = begin; i < end; ++i) {
    acc += p[i];
    ++count;
    if (acc >= target) break;
  }
  return count;
}

// Symmetric eigen-decomposition: Householder tridiagonalisation and implicit QL (the
// tred2/tql2 pair of EISPACK, as in JAMA). `a` is n x n row-major; eigenvalues come back
// descending, with unit eigenvectors as rows of `vectors` when it is non-null.
std::vector<double> SymmetricEigen(std::vector<double> a, uint32_t n_u,
                                   std::vector<double>* vectors) {
  const int n = static_cast<int>(n_u);
  auto V = [&](int r, int c) -> double& { return a[static_cast<size_t>(r) * n + c]; };
  std::vector<double> d(n), e(n);
  for (int j = 0; j < n; ++j) d[j] = V(n - 1, j);
  for (int i = n - 1; i > 0; --i) {
    double scale = 0, h = 0;
    for (int k = 0; k < i; ++k) scale += std::abs(d[k]);
    if (scale == 0) {
      e[i] = d[i - 1];
      for (int j = 0; j < i; ++j) {
        d[j] = V(i - 1, j);
        V(i, j) = 0;
        V(j, i) = 0;
      }
    } else {
      for (int k = 0; k < i; ++k) {
        d[k] /= scale;
        h += d[k] * d[k];
      }
      double f = d[i - 1];
      double g = std::sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h -= f * g;
      d[i - 1] = f - g;
      for (int j = 0; j < i; ++j) e[j] = 0;
      for (int j = 0; j < i; ++j) {
        f = d[j];
        V(j, i) = f;
        g = e[j] + V(j, j) * f;
        for (int k = j + 1; k <= i - 1; ++k) {
          g += V(k, j) * d[k];
          e[k] += V(k, j) * f;
        }
        e[j] = g;
      }
      f = 0;
      for (int j = 0; j < i; ++j) {
        e[j] /= h;
        f += e[j] * d[j];
      }
      const double hh = f / (h + h);
      for (int j = 0; j < i; ++j) e[j] -= hh * d[j];
      for (int j = 0; j < i; ++j) {
        f = d[j];
        g = e[j];
        for (int k = j; k <= i - 1; ++k) V(k, j) -= (f * e[k] + g * d[k]);
        d[j] = V(i - 1, j);
        V(i, j) = 0;
      }
    }
    d[i] = h;
  }
  for (int i = 0; i < n - 1; ++i) {
    V(n - 1, i) = V(i, i);
    V(i, i) = 1;
    const double h = d[i + 1];
    if (h != 0) {
      for (int k = 0; k <= i; ++k) d[k] = V(k, i + 1) / h;
      for (int j = 0; j <= i; ++j) {
        double g = 0;
        for (int k = 0; k <= i; ++k) g += V(k, i + 1) * V(k, j);
        for (int k = 0; k <= i; ++k) V(k, j) -= g * d[k];
      }
    }
    for (int k = 0; k <= i; ++k) V(k, i + 1) = 0;
  }
  for (int j = 0; j < n; ++j) {
    d[j] = V(n - 1, j);
    V(n - 1, j) = 0;
  }
  V(n - 1, n - 1) = 1;
  e[0] = 0;
  // tql2.
  for (int i = 1; i < n; ++i) e[i - 1] = e[i];
  e[n - 1] = 0;
  double f = 0, tst1 = 0;
  const double eps = std::ldexp(1.0, -52);
  for (int l = 0; l < n; ++l) {
    tst1 = std::max(tst1, std::abs(d[l]) + std::abs(e[l]));
    int m = l;
    while (m < n) {
      if (std::abs(e[m]) <= eps * tst1) break;
      ++m;
    }
    if (m > l) {
      int iterations = 0;
      do {
        double g = d[l];
        double p = (d[l + 1] - g) / (2 * e[l]);
        double r = std::hypot(p, 1.0);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const double dl1 = d[l + 1];
        double h = g - d[l];
        for (int i = l + 2; i < n; ++i) d[i] -= h;
        f += h;
        p = d[m];
        double c = 1, c2 = 1, c3 = 1, s = 0, s2 = 0;
        const double el1 = e[l + 1];
        for (int i = m - 1; i >= l; --i) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = std::hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          if (vectors != nullptr) {
            for (int k = 0; k < n; ++k) {
              h = V(k, i + 1);
              V(k, i + 1) = s * V(k, i) + c * h;
              V(k, i) = c * V(k, i) - s * h;
            }
          }
        }
        p = -s * s2 * c3 * el1 * e[l] / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (std::abs(e[l]) > eps * tst1 && ++iterations < 64);
    }
    d[l] += f;
    e[l] = 0;
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int x, int y) { return d[x] > d[y]; });
  std::vector<double> values(n);
  for (int i = 0; i < n; ++i) values[i] = d[order[i]];
  if (vectors != nullptr) {
    vectors->resize(static_cast<size_t>(n) * n);
    for (int i = 0; i < n; ++i) {  // eigenvector order[i] is column order[i] of V
      for (int k = 0; k < n; ++k) (*vectors)[static_cast<size_t>(i) * n + k] = V(k, order[i]);
    }
  }
  return values;
}

uint32_t RankFor(const std::vector<double>& descending, double share) {
  double total = 0;
  for (double x : descending) total += std::max(0.0, x);
  double acc = 0;
  for (size_t i = 0; i < descending.size(); ++i) {
    acc += std::max(0.0, descending[i]);
    if (acc >= share * total) return static_cast<uint32_t>(i + 1);
  }
  return static_cast<uint32_t>(descending.size());
}

// Covariance (double, n x n) of `rows` vectors of dimension n, and their mean.
std::vector<double> Covariance(const std::vector<float>& rows, uint32_t count, uint32_t n,
                               std::vector<double>* mean) {
  mean->assign(n, 0.0);
  for (uint32_t r = 0; r < count; ++r) {
    for (uint32_t i = 0; i < n; ++i) (*mean)[i] += rows[size_t{r} * n + i];
  }
  for (double& m : *mean) m /= count;
  std::vector<double> cov(size_t{n} * n, 0.0);
  std::vector<double> centred(n);
  for (uint32_t r = 0; r < count; ++r) {
    for (uint32_t i = 0; i < n; ++i) centred[i] = rows[size_t{r} * n + i] - (*mean)[i];
    for (uint32_t i = 0; i < n; ++i) {
      const double ci = centred[i];
      double* row = &cov[size_t{i} * n];
      for (uint32_t j = i; j < n; ++j) row[j] += ci * centred[j];
    }
  }
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t j = i; j < n; ++j) {
      cov[size_t{i} * n + j] /= std::max(1u, count - 1);
      cov[size_t{j} * n + i] = cov[size_t{i} * n + j];
    }
  }
  return cov;
}

double Norm(const float* x, uint32_t n) {
  double s = 0;
  for (uint32_t i = 0; i < n; ++i) s += double{x[i]} * x[i];
  return std::sqrt(s);
}

double Cosine(const float* a, const float* b, uint32_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (uint32_t i = 0; i < n; ++i) {
    ab += double{a[i]} * b[i];
    aa += double{a[i]} * a[i];
    bb += double{b[i]} * b[i];
  }
  return aa > 0 && bb > 0 ? ab / std::sqrt(aa * bb) : 0.0;
}

std::vector<double> ChannelStd(const std::vector<float>& rows, uint32_t count, uint32_t n) {
  std::vector<double> sum(n, 0.0), sq(n, 0.0);
  for (uint32_t r = 0; r < count; ++r) {
    for (uint32_t i = 0; i < n; ++i) {
      const double x = rows[size_t{r} * n + i];
      sum[i] += x;
      sq[i] += x * x;
    }
  }
  std::vector<double> stds(n);
  for (uint32_t i = 0; i < n; ++i) {
    const double m = sum[i] / count;
    stds[i] = std::sqrt(std::max(0.0, sq[i] / count - m * m));
  }
  return stds;
}

}  // namespace

HeadAttentionStats MeasureHeadAttention(const KvDataSet& data, size_t layer_index,
                                        uint32_t kv_head) {
  assert(layer_index < data.layers.size() && kv_head < data.num_kv_heads);
  assert(!data.query_positions.empty());
  const KvLayer& layer = data.layers[layer_index];
  const uint32_t d = data.head_dim;
  const uint32_t group = data.num_query_heads / data.num_kv_heads;
  const std::vector<float> keys = HeadKeys(data, layer, kv_head);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  HeadAttentionStats stats;
  std::vector<double> n90s;
  std::vector<std::vector<float>> probs(group);
  std::vector<float> gqa;
  std::vector<float> scratch;
  for (size_t qi = 0; qi < data.query_positions.size(); ++qi) {
    const uint32_t p = data.query_positions[qi];
    const uint32_t n = p + 1;
    stats.context_tokens += n;
    const uint32_t sinks = std::min(kStatSinkTokens, n);
    const uint32_t recent_begin = n > kStatRecentTokens + sinks ? n - kStatRecentTokens : sinks;
    // Logits of every query head of the group, key by key (keys stream once).
    for (uint32_t g = 0; g < group; ++g) probs[g].resize(n);
    const float* queries = &layer.queries[(qi * data.num_query_heads + size_t{kv_head} * group) * d];
    for (uint32_t j = 0; j < n; ++j) {
      const float* k = &keys[size_t{j} * d];
      for (uint32_t g = 0; g < group; ++g) {
        const float* q = queries + size_t{g} * d;
        probs[g][j] = Dot(q, k, d) * scale;
      }
    }
    gqa.assign(n, 0.0f);
    for (uint32_t g = 0; g < group; ++g) {
      std::vector<float>& pr = probs[g];
      const float max_logit = *std::max_element(pr.begin(), pr.end());
      double total = 0;
      for (float& x : pr) {
        x = std::exp(x - max_logit);
        total += x;
      }
      double entropy = 0, sink = 0, recent = 0;
      for (uint32_t j = 0; j < n; ++j) {
        pr[j] = static_cast<float>(pr[j] / total);
        const double x = pr[j];
        if (x > 0) entropy -= x * std::log(x);
        if (j < sinks) {
          sink += x;
        } else if (j >= recent_begin) {
          recent += x;
        }
        gqa[j] += pr[j];
      }
      stats.sink_share += sink;
      stats.recent_share += recent;
      stats.entropy_nats += entropy;
      scratch = pr;
      const uint32_t top2 = std::max<uint32_t>(1, static_cast<uint32_t>(std::ceil(0.02 * n)));
      std::nth_element(scratch.begin(), scratch.begin() + (top2 - 1), scratch.end(),
                       std::greater<float>());
      double top_mass = 0;
      for (uint32_t j = 0; j < top2; ++j) top_mass += scratch[j];
      stats.top2pct_share += top_mass;
      n90s.push_back(TokensForMass(scratch, 0.9));
    }
    // The 1/16 budget: sinks + recent always, exact GQA top-k over the middle.
    const uint32_t budget = (n + kStatTopKBudgetDivisor - 1) / kStatTopKBudgetDivisor;
    const uint32_t always = sinks + (n - recent_begin);
    const uint32_t middle = recent_begin - sinks;
    const uint32_t k = std::min(middle, budget > always ? budget - always : 0);
    std::vector<uint32_t> order(middle);
    std::iota(order.begin(), order.end(), sinks);
    if (k > 0 && k < middle) {
      std::nth_element(order.begin(), order.begin() + (k - 1), order.end(),
                       [&](uint32_t a, uint32_t b) { return gqa[a] > gqa[b]; });
    }
    order.resize(k);
    for (uint32_t g = 0; g < group; ++g) {
      double kept = 0;
      for (uint32_t j = 0; j < sinks; ++j) kept += probs[g][j];
      for (uint32_t j = recent_begin; j < n; ++j) kept += probs[g][j];
      for (uint32_t j : order) kept += probs[g][j];
      stats.topk_mass += kept;
    }
  }
  const double samples = static_cast<double>(n90s.size());
  stats.sink_share /= samples;
  stats.recent_share /= samples;
  stats.entropy_nats /= samples;
  stats.top2pct_share /= samples;
  stats.topk_mass /= samples;
  stats.context_tokens /= static_cast<double>(data.query_positions.size());
  stats.n90_mean = std::accumulate(n90s.begin(), n90s.end(), 0.0) / samples;
  stats.n90 = static_cast<uint32_t>(Median(n90s));
  return stats;
}

HeadType ClassifyHead(const HeadAttentionStats& stats) {
  if (stats.sink_share + stats.recent_share >= kStreamingMass) return HeadType::kStreaming;
  const double limit = std::max<double>(kRetrievalMinN90, kRetrievalN90Fraction * stats.context_tokens);
  if (stats.n90 <= limit) return HeadType::kRetrieval;
  return HeadType::kDiffuse;
}

KeyStructureStats MeasureKeyStructure(const KvDataSet& data, size_t layer_index,
                                      uint32_t kv_head) {
  assert(layer_index < data.layers.size() && kv_head < data.num_kv_heads);
  const KvLayer& layer = data.layers[layer_index];
  const uint32_t d = data.head_dim;
  const uint32_t half = d / 2;
  const uint32_t n = data.num_tokens;
  const std::vector<float> keys = HeadKeys(data, layer, kv_head);
  KeyStructureStats s;

  // Norms.
  std::vector<double> norms(n);
  for (uint32_t t = 0; t < n; ++t) norms[t] = Norm(&keys[size_t{t} * d], d);
  const double median_norm = Median(norms);
  s.sink_norm_ratio = median_norm > 0 ? norms[0] / median_norm : 0;
  if (n > 1) {
    const uint32_t last = std::min(n, kStatSinkTokens);
    double sum = 0;
    for (uint32_t t = 1; t < last; ++t) sum += norms[t];
    s.first4_norm_ratio = median_norm > 0 && last > 1 ? sum / (last - 1) / median_norm : 0;
  }

  // Subsample (evenly spaced, the sinks skipped) and its pre-RoPE version.
  const uint32_t first = std::min(n - 1, kStatSinkTokens);
  const uint32_t count = std::min(kMaxSampleTokens, n - first);
  std::vector<float> post(size_t{count} * d), pre(size_t{count} * d);
  std::vector<double> frequency(half);
  for (uint32_t i = 0; i < half; ++i) frequency[i] = std::pow(data.rope_theta, -2.0 * i / d);
  for (uint32_t r = 0; r < count; ++r) {
    const uint32_t t = first + static_cast<uint32_t>(uint64_t{r} * (n - first) / count);
    const float* k = &keys[size_t{t} * d];
    std::copy(k, k + d, post.begin() + size_t{r} * d);
    float* out = &pre[size_t{r} * d];
    for (uint32_t i = 0; i < half; ++i) {  // rotate by -t
      const double angle = t * frequency[i];
      const double c = std::cos(angle), sn = std::sin(angle);
      out[i] = static_cast<float>(k[i] * c + k[i + half] * sn);
      out[i + half] = static_cast<float>(k[i + half] * c - k[i] * sn);
    }
  }

  // Channel std profile.
  const std::vector<double> std_pre = ChannelStd(pre, count, d);
  const std::vector<double> std_post = ChannelStd(post, count, d);
  std::vector<uint32_t> order(d);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return std_pre[a] > std_pre[b]; });
  s.top_channels_pre[0] = order[0];
  s.top_channels_pre[1] = order[std::min<uint32_t>(1, d - 1)];
  s.top_channel_low_frequency = order[0] % half >= half - half / 4;
  const double median_pre = Median(std_pre);
  const double median_post = Median(std_post);
  s.channel_std_ratio_pre = median_pre > 0 ? std_pre[order[0]] / median_pre : 0;
  s.channel_std_ratio_post =
      median_post > 0 ? *std::max_element(std_post.begin(), std_post.end()) / median_post : 0;

  // PCA.
  std::vector<double> mean_pre, mean_post, vectors;
  const std::vector<double> eig_pre = SymmetricEigen(Covariance(pre, count, d, &mean_pre), d, nullptr);
  const std::vector<double> eig_post =
      SymmetricEigen(Covariance(post, count, d, &mean_post), d, &vectors);
  s.rank90_pre = RankFor(eig_pre, 0.9);
  s.rank90_post = RankFor(eig_post, 0.9);

  // Locality over all post-RoPE keys (chunks from token 8 on: chunk 0 holds the sinks).
  std::mt19937_64 rng(layer_index * 1000 + kv_head);
  std::uniform_int_distribution<uint32_t> token(first, n - 1);
  std::vector<float> mean(d);
  double chunk_sum = 0, random_chunk_sum = 0;
  uint64_t chunk_count = 0;
  for (uint32_t c = 8; c + 8 <= n; c += 8) {
    uint32_t members[8];
    for (int variant = 0; variant < 2; ++variant) {
      for (uint32_t m = 0; m < 8; ++m) members[m] = variant == 0 ? c + m : token(rng);
      std::fill(mean.begin(), mean.end(), 0.0f);
      for (uint32_t m : members) {
        for (uint32_t i = 0; i < d; ++i) mean[i] += keys[size_t{m} * d + i] / 8;
      }
      double sum = 0;
      for (uint32_t m : members) sum += Cosine(&keys[size_t{m} * d], mean.data(), d);
      (variant == 0 ? chunk_sum : random_chunk_sum) += sum / 8;
    }
    ++chunk_count;
  }
  if (chunk_count > 0) {
    s.chunk_cosine = chunk_sum / chunk_count;
    s.random_chunk_cosine = random_chunk_sum / chunk_count;
  }
  double adjacent = 0, random_pair = 0;
  const uint32_t pairs = std::min<uint32_t>(4096, n - first - 1);
  for (uint32_t r = 0; r < pairs; ++r) {
    const uint32_t t = first + static_cast<uint32_t>(uint64_t{r} * (n - first - 1) / pairs);
    adjacent += Cosine(&keys[size_t{t} * d], &keys[size_t{t + 1} * d], d);
    random_pair += Cosine(&keys[size_t{token(rng)} * d], &keys[size_t{token(rng)} * d], d);
  }
  s.adjacent_pair_cosine = pairs > 0 ? adjacent / pairs : 0;
  s.random_pair_cosine = pairs > 0 ? random_pair / pairs : 0;

  // Queries of the group vs the key distribution.
  const uint32_t group = data.num_query_heads / data.num_kv_heads;
  std::vector<const float*> queries;
  for (size_t qi = 0; qi < data.query_positions.size(); ++qi) {
    for (uint32_t g = 0; g < group; ++g) {
      queries.push_back(&layer.queries[(qi * data.num_query_heads + size_t{kv_head} * group + g) * d]);
    }
  }
  double mean_eig = 0;
  for (double e : eig_post) mean_eig += std::max(0.0, e);
  mean_eig /= d;
  const double reg = 0.01 * mean_eig;
  auto mahalanobis = [&](const float* x) {
    double sum = 0;
    for (uint32_t e = 0; e < d; ++e) {
      double proj = 0;
      for (uint32_t i = 0; i < d; ++i) proj += (x[i] - mean_post[i]) * vectors[size_t{e} * d + i];
      sum += proj * proj / (std::max(0.0, eig_post[e]) + reg);
    }
    return std::sqrt(sum);
  };
  const uint32_t key_samples = std::min<uint32_t>(count, 512);
  double key_maha = 0;
  for (uint32_t r = 0; r < key_samples; ++r) {
    key_maha += mahalanobis(&post[size_t{r * (count / key_samples)} * d]);
  }
  s.key_mahalanobis = key_samples > 0 ? key_maha / key_samples : 0;
  if (!queries.empty()) {
    std::vector<double> qmean(d, 0.0), qsq(d, 0.0);
    double maha = 0, energy_in = 0, energy = 0;
    for (const float* q : queries) {
      maha += mahalanobis(q);
      for (uint32_t i = 0; i < d; ++i) {
        qmean[i] += q[i];
        qsq[i] += double{q[i]} * q[i];
        energy += double{q[i]} * q[i];
      }
      for (uint32_t e = 0; e < s.rank90_post; ++e) {
        double proj = 0;
        for (uint32_t i = 0; i < d; ++i) proj += q[i] * vectors[size_t{e} * d + i];
        energy_in += proj * proj;
      }
    }
    s.query_mahalanobis = maha / queries.size();
    s.query_energy_in_key_subspace = energy > 0 ? energy_in / energy : 0;
    std::vector<float> qm(d), km(d);
    std::vector<double> rms(d);
    for (uint32_t i = 0; i < d; ++i) {
      qm[i] = static_cast<float>(qmean[i] / queries.size());
      km[i] = static_cast<float>(mean_post[i]);
      rms[i] = std::sqrt(qsq[i] / queries.size());
    }
    s.mean_query_key_cosine = Cosine(qm.data(), km.data(), d);
    const double median_rms = Median(rms);
    s.query_channel_rms_ratio =
        median_rms > 0 ? *std::max_element(rms.begin(), rms.end()) / median_rms : 0;
  }
  return s;
}

std::vector<HeadReport> MeasureDataSet(const KvDataSet& data, uint32_t threads) {
  std::vector<HeadReport> heads;
  for (size_t l = 0; l < data.layers.size(); ++l) {
    for (uint32_t h = 0; h < data.num_kv_heads; ++h) {
      HeadReport r;
      r.layer = data.layers[l].layer;
      r.kv_head = h;
      r.has_label = data.layers[l].head_types.size() == data.num_kv_heads;
      if (r.has_label) r.label = data.layers[l].head_types[h];
      heads.push_back(r);
    }
  }
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  threads = std::min<uint32_t>(threads, std::max<size_t>(1, heads.size()));
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  for (uint32_t w = 0; w < threads; ++w) {
    pool.emplace_back([&] {
      for (size_t i = next++; i < heads.size(); i = next++) {
        const size_t layer_index = i / data.num_kv_heads;
        const uint32_t h = static_cast<uint32_t>(i % data.num_kv_heads);
        heads[i].attention = MeasureHeadAttention(data, layer_index, h);
        heads[i].classified = ClassifyHead(heads[i].attention);
        heads[i].keys = MeasureKeyStructure(data, layer_index, h);
      }
    });
  }
  for (std::thread& t : pool) t.join();
  return heads;
}

namespace {

struct Summary {
  double mean = 0, min = 0, max = 0;
};

template <typename F>
Summary Summarize(const std::vector<const HeadReport*>& heads, F value) {
  Summary s;
  if (heads.empty()) return s;
  s.min = s.max = value(*heads[0]);
  for (const HeadReport* h : heads) {
    const double v = value(*h);
    s.mean += v;
    s.min = std::min(s.min, v);
    s.max = std::max(s.max, v);
  }
  s.mean /= heads.size();
  return s;
}

std::string Fmt(double v, int precision) { return absl::StrFormat("%.*f", precision, v); }

std::string Row(const char* label, const Summary& s, int precision) {
  return absl::StrFormat("  %-46s mean %8s   min %8s   max %8s\n", label, Fmt(s.mean, precision),
                         Fmt(s.min, precision), Fmt(s.max, precision));
}

}  // namespace

std::string FormatReport(const KvDataSet& data, const std::vector<HeadReport>& heads,
                         bool per_head) {
  std::string out;
  const uint32_t half = data.head_dim / 2;
  absl::StrAppendFormat(&out,
                        "data set: %s   layers %d   kv heads %d   query heads %d   head_dim %d   "
                        "tokens %d   rope_theta %g   queries %d (positions %d..%d)\n",
                        data.name, data.layers.size(), data.num_kv_heads, data.num_query_heads,
                        data.head_dim, data.num_tokens, data.rope_theta,
                        data.query_positions.size(),
                        data.query_positions.empty() ? 0 : data.query_positions.front(),
                        data.query_positions.empty() ? 0 : data.query_positions.back());
  std::vector<const HeadReport*> all;
  for (const HeadReport& h : heads) all.push_back(&h);

  out += "\nkey geometry (per kv head; mean / min / max over heads)\n";
  out += Row("sink key norm / median key norm (token 0)", Summarize(all, [](const HeadReport& h) { return h.keys.sink_norm_ratio; }), 3);
  out += Row("tokens 1-3 key norm / median", Summarize(all, [](const HeadReport& h) { return h.keys.first4_norm_ratio; }), 3);
  out += Row("top channel std / median channel std, pre-RoPE", Summarize(all, [](const HeadReport& h) { return h.keys.channel_std_ratio_pre; }), 2);
  out += Row("top channel std / median channel std, post-RoPE", Summarize(all, [](const HeadReport& h) { return h.keys.channel_std_ratio_post; }), 2);
  out += Row("top pre-RoPE channel in lowest-freq quarter", Summarize(all, [](const HeadReport& h) { return h.keys.top_channel_low_frequency ? 1.0 : 0.0; }), 2);
  out += Row("PCA rank for 90% variance, pre-RoPE", Summarize(all, [](const HeadReport& h) { return static_cast<double>(h.keys.rank90_pre); }), 1);
  out += Row("PCA rank for 90% variance, post-RoPE", Summarize(all, [](const HeadReport& h) { return static_cast<double>(h.keys.rank90_post); }), 1);
  out += Row("cos(key, its 8-token chunk mean)", Summarize(all, [](const HeadReport& h) { return h.keys.chunk_cosine; }), 3);
  out += Row("cos(key, mean of 8 random keys)", Summarize(all, [](const HeadReport& h) { return h.keys.random_chunk_cosine; }), 3);
  out += Row("cos(adjacent keys)", Summarize(all, [](const HeadReport& h) { return h.keys.adjacent_pair_cosine; }), 3);
  out += Row("cos(random key pair)", Summarize(all, [](const HeadReport& h) { return h.keys.random_pair_cosine; }), 3);
  out += Row("cos(mean query, mean key)", Summarize(all, [](const HeadReport& h) { return h.keys.mean_query_key_cosine; }), 3);
  out += Row("Mahalanobis under keys: queries", Summarize(all, [](const HeadReport& h) { return h.keys.query_mahalanobis; }), 1);
  out += Row("Mahalanobis under keys: keys", Summarize(all, [](const HeadReport& h) { return h.keys.key_mahalanobis; }), 1);
  out += Row("query energy in keys' top-rank90 PCs", Summarize(all, [](const HeadReport& h) { return h.keys.query_energy_in_key_subspace; }), 3);
  out += Row("query top channel RMS / median channel RMS", Summarize(all, [](const HeadReport& h) { return h.keys.query_channel_rms_ratio; }), 2);
  // Which channels carry the largest pre-RoPE std, as RoPE pairs.
  {
    std::vector<uint32_t> pair_count(half, 0);
    for (const HeadReport& h : heads) ++pair_count[h.keys.top_channels_pre[0] % half];
    std::vector<uint32_t> pairs(half);
    std::iota(pairs.begin(), pairs.end(), 0);
    std::sort(pairs.begin(), pairs.end(), [&](uint32_t a, uint32_t b) { return pair_count[a] > pair_count[b]; });
    out += "  top pre-RoPE channel's RoPE pair (pair:heads):";
    for (uint32_t i = 0; i < std::min<uint32_t>(8, half) && pair_count[pairs[i]] > 0; ++i) {
      absl::StrAppendFormat(&out, " %d:%d", pairs[i], pair_count[pairs[i]]);
    }
    absl::StrAppendFormat(&out, "   (pairs >= %d = lowest-frequency quarter)\n", half - half / 4);
  }

  const bool labelled = !heads.empty() && std::all_of(heads.begin(), heads.end(), [](const HeadReport& h) { return h.has_label; });
  absl::StrAppendFormat(&out, "\nattention per head type (types %s; ln(context) = %.2f)\n",
                        labelled ? "from the data set's labels" : "from ClassifyHead",
                        heads.empty() ? 0.0 : std::log(heads[0].attention.context_tokens));
  absl::StrAppendFormat(&out, "  %-10s %5s %8s %8s %8s %9s %8s %8s %8s\n", "type", "heads", "sink",
                        "sink+rec", "entropy", "top2%", "n90", "n90mean", "topk1/16");
  for (HeadType type : {HeadType::kStreaming, HeadType::kRetrieval, HeadType::kDiffuse}) {
    std::vector<const HeadReport*> of_type;
    for (const HeadReport& h : heads) {
      if ((labelled ? h.label : h.classified) == type) of_type.push_back(&h);
    }
    if (of_type.empty()) {
      absl::StrAppendFormat(&out, "  %-10s %5d\n", HeadTypeName(type), 0);
      continue;
    }
    auto mean = [&](auto value) { return Summarize(of_type, value).mean; };
    absl::StrAppendFormat(
        &out, "  %-10s %5d %8.3f %8.3f %8.2f %9.3f %8.0f %8.0f %8.3f\n", HeadTypeName(type),
        of_type.size(), mean([](const HeadReport& h) { return h.attention.sink_share; }),
        mean([](const HeadReport& h) { return h.attention.sink_share + h.attention.recent_share; }),
        mean([](const HeadReport& h) { return h.attention.entropy_nats; }),
        mean([](const HeadReport& h) { return h.attention.top2pct_share; }),
        mean([](const HeadReport& h) { return static_cast<double>(h.attention.n90); }),
        mean([](const HeadReport& h) { return h.attention.n90_mean; }),
        mean([](const HeadReport& h) { return h.attention.topk_mass; }));
  }
  {
    uint32_t sink_heads = 0;
    for (const HeadReport& h : heads) sink_heads += h.attention.sink_share > 0.3 ? 1 : 0;
    absl::StrAppendFormat(&out, "  heads with sink share > 0.3: %d of %d (%.0f%%)\n", sink_heads,
                          heads.size(), heads.empty() ? 0.0 : 100.0 * sink_heads / heads.size());
    std::vector<const HeadReport*> all_heads = all;
    absl::StrAppendFormat(&out, "  all heads: top-k mass at 1/16 budget mean %.3f  min %.3f\n",
                          Summarize(all_heads, [](const HeadReport& h) { return h.attention.topk_mass; }).mean,
                          Summarize(all_heads, [](const HeadReport& h) { return h.attention.topk_mass; }).min);
  }

  if (labelled) {
    out += "\nlabel vs ClassifyHead (rows: label; columns: classified streaming/retrieval/diffuse)\n";
    uint32_t agree = 0;
    for (HeadType label : {HeadType::kStreaming, HeadType::kRetrieval, HeadType::kDiffuse}) {
      uint32_t counts[3] = {0, 0, 0};
      for (const HeadReport& h : heads) {
        if (h.label == label) ++counts[static_cast<int>(h.classified)];
      }
      agree += counts[static_cast<int>(label)];
      absl::StrAppendFormat(&out, "  %-10s %5d %5d %5d\n", HeadTypeName(label), counts[0], counts[1], counts[2]);
    }
    absl::StrAppendFormat(&out, "  agreement: %d of %d heads\n", agree, heads.size());
  } else {
    out += "\n(no labels in the data set: types above come from ClassifyHead)\n";
  }

  if (per_head) {
    out += "\nper head\n";
    absl::StrAppendFormat(&out, "  %5s %4s %-10s %-10s %6s %6s %6s %6s %6s %6s %5s %5s %6s\n", "layer",
                          "head", "label", "classified", "sink", "recent", "H", "top2%", "n90",
                          "topk", "rk_pr", "rk_po", "chStd");
    for (const HeadReport& h : heads) {
      absl::StrAppendFormat(&out, "  %5d %4d %-10s %-10s %6.3f %6.3f %6.2f %6.3f %6d %6.3f %5d %5d %6.1f\n",
                            h.layer, h.kv_head, h.has_label ? HeadTypeName(h.label) : "-",
                            HeadTypeName(h.classified), h.attention.sink_share,
                            h.attention.recent_share, h.attention.entropy_nats,
                            h.attention.top2pct_share, h.attention.n90, h.attention.topk_mass,
                            h.keys.rank90_pre, h.keys.rank90_post, h.keys.channel_std_ratio_pre);
    }
  }
  return out;
}

}  // namespace pqkv::workload

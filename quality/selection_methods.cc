#include "quality/selection_methods.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace pqkv::quality {

std::vector<uint32_t> OracleSelection(const std::vector<float>& gqa_score, uint32_t begin,
                                      uint32_t end, uint32_t k) {
  std::vector<uint32_t> order(end - begin);
  std::iota(order.begin(), order.end(), begin);
  // Ties go to the lower position, so the oracle is deterministic.
  std::nth_element(order.begin(), order.begin() + (k - 1), order.end(),
                   [&](uint32_t a, uint32_t b) {
                     return gqa_score[a] != gqa_score[b] ? gqa_score[a] > gqa_score[b] : a < b;
                   });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<uint32_t> StreamingSelection(uint32_t begin, uint32_t end, uint32_t k) {
  std::vector<uint32_t> out(k);
  std::iota(out.begin(), out.end(), std::max(begin, end - k));
  return out;
}

std::vector<uint32_t> QuestSelection(const float* keys, const float* group_queries,
                                     uint32_t group_size, uint32_t head_dim, uint32_t begin,
                                     uint32_t end, uint32_t k, uint32_t page_tokens) {
  // Pages are aligned to absolute positions, as a paged cache holds them; the edge pages
  // only count their candidate tokens.
  const uint32_t first_page = begin / page_tokens;
  const uint32_t num_pages = (end + page_tokens - 1) / page_tokens - first_page;
  std::vector<float> lo(static_cast<size_t>(num_pages) * head_dim);
  std::vector<float> hi(lo.size());
  for (uint32_t p = 0; p < num_pages; ++p) {
    const uint32_t a = std::max(begin, (first_page + p) * page_tokens);
    const uint32_t b = std::min(end, (first_page + p + 1) * page_tokens);
    for (uint32_t i = 0; i < head_dim; ++i) {
      float mn = keys[static_cast<size_t>(a) * head_dim + i], mx = mn;
      for (uint32_t t = a + 1; t < b; ++t) {
        const float x = keys[static_cast<size_t>(t) * head_dim + i];
        mn = std::min(mn, x);
        mx = std::max(mx, x);
      }
      lo[static_cast<size_t>(p) * head_dim + i] = mn;
      hi[static_cast<size_t>(p) * head_dim + i] = mx;
    }
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> combined(num_pages, 0.0);
  std::vector<double> bound(num_pages);
  for (uint32_t g = 0; g < group_size; ++g) {
    const float* q = group_queries + static_cast<size_t>(g) * head_dim;
    double max_bound = -INFINITY;
    for (uint32_t p = 0; p < num_pages; ++p) {
      double s = 0;
      for (uint32_t i = 0; i < head_dim; ++i) {
        s += std::max(q[i] * lo[static_cast<size_t>(p) * head_dim + i],
                      q[i] * hi[static_cast<size_t>(p) * head_dim + i]);
      }
      bound[p] = s * scale;
      max_bound = std::max(max_bound, bound[p]);
    }
    double sum = 0;
    for (double& b : bound) sum += (b = std::exp(b - max_bound));
    for (uint32_t p = 0; p < num_pages; ++p) combined[p] += bound[p] / sum;
  }
  std::vector<uint32_t> pages(num_pages);
  std::iota(pages.begin(), pages.end(), 0);
  std::stable_sort(pages.begin(), pages.end(),
                   [&](uint32_t a, uint32_t b) { return combined[a] > combined[b]; });
  std::vector<uint32_t> out;
  out.reserve(k);
  for (uint32_t p : pages) {
    const uint32_t a = std::max(begin, (first_page + p) * page_tokens);
    const uint32_t b = std::min(end, (first_page + p + 1) * page_tokens);
    for (uint32_t t = a; t < b && out.size() < k; ++t) out.push_back(t);
    if (out.size() == k) break;
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint32_t> RandomSelection(uint32_t begin, uint32_t end, uint32_t k, uint64_t seed) {
  std::vector<uint32_t> all(end - begin);
  std::iota(all.begin(), all.end(), begin);
  std::mt19937_64 rng(seed);
  for (uint32_t i = 0; i < k; ++i) {  // partial Fisher-Yates
    std::uniform_int_distribution<size_t> pick(i, all.size() - 1);
    std::swap(all[i], all[pick(rng)]);
  }
  all.resize(k);
  std::sort(all.begin(), all.end());
  return all;
}

}  // namespace pqkv::quality

#include "workload/planted_kv.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <unordered_set>

#include "kernels/dtype_convert.h"
#include "kernels/gqa_softmax.h"
#include "kernels/pq_scan.h"

namespace pqkv::workload {
namespace {

float RoundToHalf(float x) { return kernels::HalfToFloat(kernels::FloatToHalf(x)); }

std::vector<float> RandomUnit(std::mt19937_64& rng, uint32_t dim) {
  std::normal_distribution<float> normal;
  std::vector<float> u(dim);
  double norm = 0;
  for (float& x : u) {
    x = normal(rng);
    norm += x * x;
  }
  for (float& x : u) x = static_cast<float>(x / std::sqrt(norm));
  return u;
}

}  // namespace

std::vector<float> PlantedKey(const std::vector<float>& direction, float norm, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  std::vector<float> key(direction.size());
  for (size_t i = 0; i < key.size(); ++i) key[i] = RoundToHalf(norm * direction[i] + noise(rng));
  return key;
}

LayerData GeneratePlantedLayer(const PlantedKvSpec& spec, uint32_t layer) {
  std::mt19937_64 rng(spec.seed * 1000003 + layer);
  std::normal_distribution<float> normal;
  const uint32_t n = spec.num_tokens;
  const uint32_t dim = spec.head_dim;
  const uint32_t group = spec.num_query_heads / spec.num_kv_heads;
  LayerData data;
  data.keys.resize(static_cast<size_t>(spec.num_kv_heads) * n * dim);
  data.values.resize(data.keys.size());
  for (float& x : data.keys) x = RoundToHalf(normal(rng));
  for (float& x : data.values) x = RoundToHalf(normal(rng));
  data.query.resize(static_cast<size_t>(spec.num_query_heads) * dim);

  const uint32_t first = spec.sinks;
  const uint32_t last = n > spec.recent ? n - spec.recent : 0;
  std::uniform_int_distribution<uint32_t> position(first, last > first ? last - 1 : first);
  for (uint32_t h = 0; h < spec.num_kv_heads; ++h) {
    data.directions.push_back(RandomUnit(rng, dim));
    const std::vector<float>& u = data.directions.back();
    std::unordered_set<uint32_t> chosen;
    const uint32_t wanted = std::min(spec.planted_per_head, last > first ? last - first : 0);
    while (chosen.size() < wanted) chosen.insert(position(rng));
    data.planted.emplace_back(chosen.begin(), chosen.end());
    std::sort(data.planted.back().begin(), data.planted.back().end());
    for (uint32_t t : data.planted.back()) {
      const std::vector<float> key = PlantedKey(u, spec.planted_key_norm, rng());
      std::copy(key.begin(), key.end(), data.keys.begin() + (static_cast<size_t>(h) * n + t) * dim);
    }
    for (uint32_t g = 0; g < group; ++g) {
      float* q = data.query.data() + static_cast<size_t>(h * group + g) * dim;
      for (uint32_t i = 0; i < dim; ++i) q[i] = spec.query_norm * u[i] + 0.3f * normal(rng);
    }
  }
  return data;
}

std::vector<uint16_t> ToHalf(const std::vector<float>& values) {
  std::vector<uint16_t> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = kernels::FloatToHalf(values[i]);
  return out;
}

std::vector<float> ExactGqaScores(const float* keys, uint32_t n, const float* group_queries,
                                  uint32_t group_size, uint32_t dim) {
  std::vector<float> logits(n);
  std::vector<float> scores(n, 0.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  for (uint32_t g = 0; g < group_size; ++g) {
    kernels::ExactScores(group_queries + static_cast<size_t>(g) * dim, keys, n,
                         static_cast<int>(dim), logits.data());
    kernels::AccumulateSoftmax(logits.data(), n, scale, scores.data());
  }
  return scores;
}

double MassOf(const std::vector<float>& scores, const std::vector<uint32_t>& positions) {
  double mass = 0;
  for (uint32_t p : positions) mass += scores[p];
  return mass;
}

double Recall(const std::vector<uint32_t>& selected, const std::vector<uint32_t>& reference) {
  if (reference.empty()) return 1.0;
  const std::unordered_set<uint32_t> chosen(selected.begin(), selected.end());
  size_t hits = 0;
  for (uint32_t p : reference) hits += chosen.count(p);
  return static_cast<double>(hits) / reference.size();
}

}  // namespace pqkv::workload

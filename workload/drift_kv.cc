#include "workload/drift_kv.h"

#include <cmath>
#include <random>
#include <vector>

#include "kernels/dtype_convert.h"

namespace pqkv::workload {
namespace {

constexpr float kNoiseStd = 0.5f;  // within a topic, per channel; centres have std 1

// The cluster centres of one kind of keys, [clusters][dim].
std::vector<float> Centres(const DriftSpec& spec, bool new_kind, std::mt19937_64& rng) {
  const uint32_t d = spec.head_dim;
  std::normal_distribution<float> normal;
  std::vector<float> shift(d);
  for (float& x : shift) x = normal(rng);
  double norm = 0;
  for (float x : shift) norm += double(x) * x;
  const float to_shift = static_cast<float>(spec.shift / std::sqrt(norm));
  std::vector<float> centres(static_cast<size_t>(spec.clusters) * d);
  for (uint32_t c = 0; c < spec.clusters; ++c) {
    for (uint32_t i = 0; i < d; ++i) {
      float x = normal(rng);
      if (new_kind) {
        x += shift[i] * to_shift;
        // Two outlier channels, in the upper half (low RoPE frequencies in a real model).
        if (i == d - 1 || i == d - 3) x *= static_cast<float>(spec.outlier_scale);
      }
      centres[static_cast<size_t>(c) * d + i] = x;
    }
  }
  return centres;
}

}  // namespace

KvDataSet GenerateDriftTrace(const DriftSpec& spec) {
  const uint32_t d = spec.head_dim, H = spec.num_kv_heads;
  const uint32_t group = spec.num_query_heads / H;
  const uint32_t n = spec.prefill_tokens + spec.decode_tokens;
  KvDataSet data;
  data.name = "drift";
  data.num_kv_heads = H;
  data.num_query_heads = spec.num_query_heads;
  data.head_dim = d;
  data.num_tokens = n;
  for (uint32_t p = spec.prefill_tokens + spec.query_every - 1; p < n; p += spec.query_every) {
    data.query_positions.push_back(p);
  }
  std::mt19937_64 rng(spec.seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<double> uniform(0, 1);
  for (uint32_t l = 0; l < spec.num_layers; ++l) {
    KvLayer layer;
    layer.layer = l;
    layer.keys.resize(static_cast<size_t>(H) * n * d);
    layer.values.resize(static_cast<size_t>(H) * n * d);
    layer.queries.resize(data.query_positions.size() * spec.num_query_heads * d);
    for (uint32_t h = 0; h < H; ++h) {
      const std::vector<float> old_centres = Centres(spec, false, rng);
      const std::vector<float> new_centres = Centres(spec, true, rng);
      // Per token: its kind and topic, so that queries can aim at a recent new-kind topic.
      std::vector<int> topic(n);
      std::vector<bool> new_kind(n);
      for (uint32_t t = 0; t < n; ++t) {
        const double progress =
            t < spec.prefill_tokens
                ? 0.0
                : double(t - spec.prefill_tokens + 1) / std::max<uint32_t>(1, spec.decode_tokens);
        new_kind[t] = uniform(rng) < spec.drift * progress;
        topic[t] = static_cast<int>(rng() % spec.clusters);
        const float* centre =
            (new_kind[t] ? new_centres : old_centres).data() + static_cast<size_t>(topic[t]) * d;
        const float outlier = static_cast<float>(new_kind[t] ? spec.outlier_scale : 1.0);
        for (uint32_t i = 0; i < d; ++i) {
          const float noise = kNoiseStd * normal(rng) * ((i == d - 1 || i == d - 3) ? outlier : 1);
          const size_t at = (static_cast<size_t>(h) * n + t) * d + i;
          layer.keys[at] = kernels::FloatToHalf(centre[i] + noise);
          layer.values[at] = kernels::FloatToHalf(normal(rng));
        }
      }
      for (size_t qi = 0; qi < data.query_positions.size(); ++qi) {
        const uint32_t p = data.query_positions[qi];
        // The newest new-kind token before p (a decode token), else the newest token.
        uint32_t target = p - 1;
        for (uint32_t t = p; t-- > spec.prefill_tokens;) {
          if (new_kind[t]) {
            target = t;
            break;
          }
        }
        const float* centre = (new_kind[target] ? new_centres : old_centres).data() +
                              static_cast<size_t>(topic[target]) * d;
        double norm = 0;
        for (uint32_t i = 0; i < d; ++i) norm += double(centre[i]) * centre[i];
        // Logits of the target topic's keys about query_scale x sqrt(d) above the rest's.
        const float scale = static_cast<float>(spec.query_scale * std::sqrt(double(d)) /
                                               std::sqrt(std::max(norm, 1e-12)));
        for (uint32_t g = 0; g < group; ++g) {
          float* q = layer.queries.data() +
                     (qi * spec.num_query_heads + static_cast<size_t>(h) * group + g) * d;
          for (uint32_t i = 0; i < d; ++i) q[i] = scale * centre[i] + 0.3f * normal(rng);
        }
      }
    }
    data.layers.push_back(std::move(layer));
  }
  return data;
}

}  // namespace pqkv::workload

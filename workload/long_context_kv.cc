#include "workload/long_context_kv.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <numeric>
#include <thread>
#include <utility>

#include "kernels/dtype_convert.h"

namespace pqkv::workload {
namespace {

// Sources (shared/research/quality.md): [SL] StreamingLLM / "attention sink emerges"
// (Gu et al.) for sinks; [KIVI] KIVI / KVQuant for outlier key channels; [Jin] Jin et al.
// 2025 (massive Q/K values in low-frequency pairs); [Loki] Loki and [SKV] ShadowKV for
// low rank and chunk locality; [RA] RetrievalAttention for query/key OOD; [RR] Barbero
// et al. "Round and round" for RoPE roles and no decay on Gaussian data; [RH] "retrieval
// heads" (Wu et al.) and DuoAttention for the head mix; [MP] MagicPIG for diffuse heads.

constexpr uint32_t kRecentWindow = 64;   // the window the statistics call "recent"
constexpr uint32_t kSinkPairs = 2;       // RoPE pairs reserved for the sink direction
constexpr double kBandMinFrequency = 1.0 / 512;  // lowest frequency of the recency band
constexpr float kPositionalPairNorm = 3.0f;  // |c_i| of the positional pattern per pair
constexpr float kSinkKeyNorm = 5.0f;     // sink key norm: ~0.2x a typical key [SL]
constexpr float kNeedleKeyNorm = 20.0f;  // norm of the needle component of a needle key
constexpr float kSinkDimNoise = 0.02f;   // std of ordinary keys in the sink pairs
constexpr double kResidualShare = 0.1;   // isotropic part of the semantic key variance
constexpr double kQueryOutlierShare = 0.3;  // logit variance via the outlier channels

// ---- random numbers: xoshiro256+ seeded by splitmix64 (fast; the shape has ~5e8
// samples). Normal() sums 8 uniform bytes (Irwin-Hall): Gaussian to 4.9 sigma, excess
// kurtosis -0.15; "Gaussian-ish" is what the model asks for.
uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t StreamSeed(uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t s = seed ^ (a * 0x632be59bd9b4e019ULL) ^ (b * 0x8cb92ba72f3d8dd7ULL);
  SplitMix(s);
  return SplitMix(s);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (uint64_t& w : s_) w = SplitMix(seed);
  }
  uint64_t Next() {
    const uint64_t result = s_[0] + s_[3];
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = (s_[3] << 45) | (s_[3] >> 19);
    return result;
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  uint32_t Below(uint32_t n) { return static_cast<uint32_t>(Uniform() * n); }
  float Normal() {
    const uint64_t x = Next();
    uint64_t pairs = (x & 0x00ff00ff00ff00ffULL) + ((x >> 8) & 0x00ff00ff00ff00ffULL);
    const uint64_t sum = (pairs * 0x0001000100010001ULL) >> 48;  // sum of the 8 bytes
    return (static_cast<float>(sum) - 1020.0f) * (1.0f / 209.0215f);
  }
  // Uniform in [-width, width]: the per-head jitter of the logit targets.
  double Jitter(double width) { return (2 * Uniform() - 1) * width; }

 private:
  uint64_t s_[4];
};

void Normalize(std::vector<float>& v) {
  double n = 0;
  for (float x : v) n += double{x} * x;
  n = std::sqrt(n);
  if (n > 0) {
    for (float& x : v) x = static_cast<float>(x / n);
  }
}

// A random unit vector supported on the dims where mask[i] is true.
std::vector<float> RandomUnitOn(Rng& rng, const std::vector<bool>& mask) {
  std::vector<float> v(mask.size(), 0.0f);
  for (size_t i = 0; i < v.size(); ++i) {
    if (mask[i]) v[i] = rng.Normal();
  }
  Normalize(v);
  return v;
}

// cos/sin of position * theta_i for every position and pair (shared by all heads).
struct RopeTable {
  uint32_t half = 0;
  std::vector<double> frequency;  // theta^(-2i/d)
  std::vector<float> cos;         // [position][pair]
  std::vector<float> sin;
};

RopeTable MakeRopeTable(uint32_t num_tokens, uint32_t head_dim, double theta) {
  RopeTable t;
  t.half = head_dim / 2;
  t.frequency.resize(t.half);
  for (uint32_t i = 0; i < t.half; ++i) {
    t.frequency[i] = std::pow(theta, -2.0 * i / head_dim);
  }
  t.cos.resize(static_cast<size_t>(num_tokens) * t.half);
  t.sin.resize(t.cos.size());
  for (uint32_t p = 0; p < num_tokens; ++p) {
    for (uint32_t i = 0; i < t.half; ++i) {
      const double angle = p * t.frequency[i];
      t.cos[size_t{p} * t.half + i] = static_cast<float>(std::cos(angle));
      t.sin[size_t{p} * t.half + i] = static_cast<float>(std::sin(angle));
    }
  }
  return t;
}

// HF rotate_half RoPE at `position`: out[i] = x[i] c - x[i+h] s, out[i+h] = x[i+h] c + x[i] s.
void Rotate(const RopeTable& t, uint32_t position, const float* in, float* out) {
  const float* c = &t.cos[size_t{position} * t.half];
  const float* s = &t.sin[size_t{position} * t.half];
  const uint32_t h = t.half;
  for (uint32_t i = 0; i < h; ++i) {
    const float a = in[i];
    const float b = in[i + h];
    out[i] = a * c[i] - b * s[i];
    out[i + h] = b * c[i] + a * s[i];
  }
}

// What every head of the data set shares: the text's topic segments, its anomalous
// chunks and the needle positions.
struct SharedText {
  std::vector<uint32_t> segment_of;  // per token
  uint32_t num_segments = 0;
  std::vector<bool> outlier_chunk;   // per 8-token chunk
  std::vector<uint32_t> needles;     // ascending
  std::vector<bool> is_needle;       // per token
};

SharedText MakeSharedText(const LongContextSpec& spec) {
  Rng rng(StreamSeed(spec.seed, 0xfeed, 0));
  SharedText text;
  const uint32_t n = spec.num_tokens;
  // Topic segments of hundreds of tokens [SKV, ClusterKV]: exponential lengths, >= 32.
  text.segment_of.resize(n);
  uint32_t start = 0;
  while (start < n) {
    const double length = -std::log(1.0 - rng.Uniform()) * spec.mean_topic_tokens;
    const uint32_t end = std::min<uint32_t>(n, start + std::max<uint32_t>(32, length));
    for (uint32_t t = start; t < end; ++t) text.segment_of[t] = text.num_segments;
    ++text.num_segments;
    start = end;
  }
  // ~0.3% of 8-token chunks break locality (ShadowKV keeps 48 outlier chunks) [SKV].
  text.outlier_chunk.resize((n + 7) / 8);
  for (size_t c = 1; c < text.outlier_chunk.size(); ++c) {
    text.outlier_chunk[c] = rng.Uniform() < spec.outlier_chunk_fraction;
  }
  // Needles anywhere in the context, outside the sinks and the recent window [RH].
  text.is_needle.assign(n, false);
  const uint32_t first = spec.sink_tokens;
  const uint32_t last = n - kRecentWindow - spec.num_queries;
  while (text.needles.size() < spec.needles && text.needles.size() < last - first) {
    const uint32_t p = first + rng.Below(last - first);
    if (!text.is_needle[p]) {
      text.is_needle[p] = true;
      text.needles.push_back(p);
    }
  }
  std::sort(text.needles.begin(), text.needles.end());
  return text;
}

// Logit targets of one kv head, in logit units (q.k/sqrt(d)); "tail" = an ordinary
// distant key, whose mean logit is 0. ln_n = ln(num_tokens): sink and needle logits are
// set relative to it so the shares hold at 32K and at 128K alike.
struct LogitTargets {
  double sink = 0;      // logit of token 0
  double band = 0;      // peak of the recency band (distance 0)
  double semantic = 0;  // std of the content logit over ordinary keys
  double needle = 0;    // logit of a needle key (retrieval heads)
};

// Calibration [quality.md 2.1, 2.6, 2.7]: streaming heads: sinks 0.6-0.9 and sinks+recent
// > 0.9; retrieval heads: a few needles carry most of the non-sink mass, the rest on
// the sink; diffuse heads: sink share small, entropy a few nats below ln N, top-2% mass
// < 0.5 [MP]. Jitter spreads heads of one type as in real models.
LogitTargets TargetsFor(HeadType type, double ln_n, Rng& rng) {
  LogitTargets t;
  switch (type) {
    case HeadType::kStreaming:
      // The band's mass is ~e^(band + 0.9) (mostly the last few positions); its far
      // field adds noise of std ~band/sqrt(2 * band pairs) to every distant key, so the
      // band must clear ln N by a margin for the tail to stay < ~5%.
      t.band = ln_n + 4.8 + rng.Jitter(0.7);
      t.sink = t.band + 2.0 + rng.Jitter(0.6);  // sink : recent ~ 6 : 1 .. 2 : 1
      t.semantic = 0.8 + rng.Jitter(0.2);
      break;
    case HeadType::kRetrieval:
      t.band = 10.0 + rng.Jitter(1.0);
      t.semantic = 0.8 + rng.Jitter(0.2);
      t.needle = ln_n + 2.6 + rng.Jitter(0.3);
      t.sink = t.needle - 0.3 + rng.Jitter(0.4);
      break;
    case HeadType::kDiffuse:
      t.sink = ln_n - 0.5 + rng.Jitter(0.7);
      t.band = 4.0 + rng.Jitter(1.0);
      t.semantic = 1.5 + rng.Jitter(0.25);
      break;
  }
  return t;
}

struct Context {
  const LongContextSpec* spec;
  const RopeTable* rope;
  const SharedText* text;
  double ln_n;
};

// Generates kv head `kv_head` of `layer` into `out` (keys, values, its group's queries).
void GenerateHead(const Context& ctx, uint32_t layer_index, uint32_t kv_head, HeadType type,
                  KvLayer* out) {
  const LongContextSpec& spec = *ctx.spec;
  const RopeTable& rope = *ctx.rope;
  const SharedText& text = *ctx.text;
  const uint32_t d = spec.head_dim;
  const uint32_t half = d / 2;
  const uint32_t n = spec.num_tokens;
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
  Rng rng(StreamSeed(spec.seed, layer_index + 1, kv_head + 1));

  // ---- channel roles. Sink and outlier pairs among the lowest-frequency eighth of the
  // pairs: massive Q/K values and outlier key channels sit in low-frequency pairs [Jin,
  // KIVI]; RoPE barely rotates them, so they stay put along the sequence.
  const uint32_t low = std::max<uint32_t>(kSinkPairs + spec.outlier_pairs, half / 4);
  std::vector<uint32_t> low_pairs(low);
  std::iota(low_pairs.begin(), low_pairs.end(), half - low);
  for (uint32_t i = 0; i + 1 < low; ++i) std::swap(low_pairs[i], low_pairs[i + rng.Below(low - i)]);
  std::vector<bool> sink_dim(d, false), outlier_dim(d, false), band_dim(d, false);
  for (uint32_t i = 0; i < kSinkPairs; ++i) {
    sink_dim[low_pairs[i]] = sink_dim[low_pairs[i] + half] = true;
  }
  for (uint32_t i = kSinkPairs; i < kSinkPairs + spec.outlier_pairs; ++i) {
    outlier_dim[low_pairs[i]] = outlier_dim[low_pairs[i] + half] = true;
  }
  // The recency band: high-frequency pairs (frequency >= 1/512 rad/token, at most half
  // of the pairs) carry positional information [RR].
  uint32_t band_pairs = 0;
  while (band_pairs < half / 2 && rope.frequency[band_pairs] >= kBandMinFrequency) ++band_pairs;
  for (uint32_t i = 0; i < band_pairs; ++i) band_dim[i] = band_dim[i + half] = true;
  std::vector<bool> bulk_dim(d), semantic_dim(d);
  for (uint32_t i = 0; i < d; ++i) {
    bulk_dim[i] = !sink_dim[i];
    // The query's content direction uses the mid/low frequencies (semantic matching
    // happens there [RR]) and leaves the outlier pair to its own offset.
    semantic_dim[i] = !sink_dim[i] && !band_dim[i] && !outlier_dim[i];
  }
  const uint32_t bulk_count = static_cast<uint32_t>(std::count(bulk_dim.begin(), bulk_dim.end(), true));

  // ---- the low-rank semantic part [Loki, SKV]: rank d/2 latent with an exponentially
  // decaying spectrum, mapped by random orthonormal rows onto the bulk dims, plus a
  // small isotropic residual; mean channel variance 1.
  const uint32_t rank = half;
  std::vector<float> basis(size_t{rank} * d, 0.0f);  // [rank][d], orthonormal rows
  for (uint32_t j = 0; j < rank; ++j) {
    std::vector<float> row = RandomUnitOn(rng, bulk_dim);
    for (uint32_t k = 0; k < j; ++k) {
      const float* prev = &basis[size_t{k} * d];
      double dot = 0;
      for (uint32_t i = 0; i < d; ++i) dot += double{row[i]} * prev[i];
      for (uint32_t i = 0; i < d; ++i) row[i] -= static_cast<float>(dot * prev[i]);
    }
    Normalize(row);
    std::copy(row.begin(), row.end(), basis.begin() + size_t{j} * d);
  }
  std::vector<double> latent_var(rank);
  const double tau = rank / 1.2;
  for (uint32_t j = 0; j < rank; ++j) latent_var[j] = std::exp(-static_cast<double>(j) / tau);
  const double latent_total = std::accumulate(latent_var.begin(), latent_var.end(), 0.0);
  for (double& v : latent_var) v *= (1.0 - kResidualShare) * bulk_count / latent_total;
  std::vector<float> latent_std(rank);
  for (uint32_t j = 0; j < rank; ++j) latent_std[j] = static_cast<float>(std::sqrt(latent_var[j]));
  const float residual_std = static_cast<float>(std::sqrt(kResidualShare));

  // Key mean: keys are not centred (MagicPIG centres them before hashing) [MP]. The
  // positional pattern c: a constant vector in the band pairs, random phase per pair.
  std::vector<float> key_mean(d, 0.0f);
  for (uint32_t i = 0; i < d; ++i) {
    if (bulk_dim[i]) key_mean[i] = 0.5f * rng.Normal();
  }
  std::vector<float> positional(d, 0.0f);
  for (uint32_t i = 0; i < band_pairs; ++i) {
    const double phase = 2 * M_PI * rng.Uniform();
    positional[i] = static_cast<float>(kPositionalPairNorm * std::cos(phase));
    positional[i + half] = static_cast<float>(kPositionalPairNorm * std::sin(phase));
  }
  // Outlier channels: ~10x the typical std, with a mean of the same order [KIVI].
  const float outlier_std = static_cast<float>(spec.outlier_std_ratio);
  for (uint32_t i = 0; i < d; ++i) {
    if (outlier_dim[i]) key_mean[i] = (rng.Uniform() < 0.5 ? -0.5f : 0.5f) * outlier_std;
  }
  for (uint32_t i = 0; i < d; ++i) key_mean[i] += positional[i];

  // Topic centres (in the key space) for every segment of the text [SKV, ClusterKV].
  const float topic_scale = static_cast<float>(std::sqrt(spec.topic_variance_share));
  const float noise_scale = static_cast<float>(std::sqrt(1.0 - spec.topic_variance_share));
  std::vector<float> topic_center(size_t{text.num_segments} * d, 0.0f);
  for (uint32_t s = 0; s < text.num_segments; ++s) {
    float* center = &topic_center[size_t{s} * d];
    for (uint32_t j = 0; j < rank; ++j) {
      const float z = topic_scale * latent_std[j] * rng.Normal();
      const float* row = &basis[size_t{j} * d];
      for (uint32_t i = 0; i < d; ++i) center[i] += z * row[i];
    }
  }

  // Head directions: the sink direction u (sink pairs), the content direction w and the
  // needle direction v (semantic dims; v orthogonal to w).
  const std::vector<float> sink_dir = RandomUnitOn(rng, sink_dim);
  const std::vector<float> content_dir = RandomUnitOn(rng, semantic_dim);
  std::vector<float> needle_dir = RandomUnitOn(rng, semantic_dim);
  {
    double dot = 0;
    for (uint32_t i = 0; i < d; ++i) dot += double{needle_dir[i]} * content_dir[i];
    for (uint32_t i = 0; i < d; ++i) needle_dir[i] -= static_cast<float>(dot * content_dir[i]);
    Normalize(needle_dir);
  }
  const LogitTargets targets = TargetsFor(type, ctx.ln_n, rng);

  // ---- keys and values.
  const size_t head_offset = size_t{kv_head} * n * d;
  uint16_t* keys = &out->keys[head_offset];
  uint16_t* values = &out->values[head_offset];
  std::vector<float> value_scale(d), value_mean(d);
  for (uint32_t i = 0; i < d; ++i) {
    value_scale[i] = static_cast<float>(0.5 + rng.Uniform());
    value_mean[i] = 0.2f * rng.Normal();
  }
  std::vector<float> pre(d), post(d), latent(rank);
  for (uint32_t t = 0; t < n; ++t) {
    if (t < spec.sink_tokens) {
      // Sinks: small norm, along the direction the queries share [SL]. Token 0 is the
      // main sink; tokens 1.. take e^-2.5, e^-3, ... of its logit's mass.
      const float scale = t == 0 ? 1.0f
                                 : static_cast<float>((targets.sink - 2.0 - 0.5 * t) /
                                                      targets.sink);
      for (uint32_t i = 0; i < d; ++i) {
        pre[i] = kSinkKeyNorm * scale * sink_dir[i] + 0.05f * rng.Normal();
      }
      Rotate(rope, t, pre.data(), post.data());
    } else {
      const bool anomalous = text.outlier_chunk[t / 8];
      const float* center = &topic_center[size_t{text.segment_of[t]} * d];
      for (uint32_t i = 0; i < d; ++i) pre[i] = key_mean[i] + (anomalous ? 0.0f : center[i]);
      const float z_scale = anomalous ? 1.5f : noise_scale;
      for (uint32_t j = 0; j < rank; ++j) latent[j] = z_scale * latent_std[j] * rng.Normal();
      for (uint32_t j = 0; j < rank; ++j) {
        const float z = latent[j];
        const float* row = &basis[size_t{j} * d];
        for (uint32_t i = 0; i < d; ++i) pre[i] += z * row[i];
      }
      for (uint32_t i = 0; i < d; ++i) {
        const float noise = rng.Normal();
        if (sink_dim[i]) {
          pre[i] += kSinkDimNoise * noise;
        } else if (outlier_dim[i]) {
          pre[i] += outlier_std * noise;
        } else {
          pre[i] += residual_std * noise;
        }
      }
      Rotate(rope, t, pre.data(), post.data());
      if (type == HeadType::kRetrieval && text.is_needle[t]) {
        // The needle key matches this head's decode queries (quality.md 2.8).
        for (uint32_t i = 0; i < d; ++i) post[i] += kNeedleKeyNorm * needle_dir[i];
      }
    }
    const float value_gain = t < spec.sink_tokens ? 0.1f : 1.0f;  // sink values ~ no-op [SL]
    for (uint32_t i = 0; i < d; ++i) {
      keys[size_t{t} * d + i] = kernels::FloatToHalf(post[i]);
      const float v = value_gain * (value_mean[i] + value_scale[i] * rng.Normal());
      values[size_t{t} * d + i] = kernels::FloatToHalf(v);
    }
  }

  // ---- decode queries. Logit of an ordinary key = content + outlier + positional terms;
  // query magnitudes follow from the targets (per-head temperature, quality.md 2.7).
  // Content variance along a unit w in the bulk: sum_j (basis_j . w)^2 var_j + residual.
  auto content_variance = [&](const std::vector<float>& w) {
    double var = 0;
    for (uint32_t j = 0; j < rank; ++j) {
      double dot = 0;
      for (uint32_t i = 0; i < d; ++i) dot += double{basis[size_t{j} * d + i]} * w[i];
      var += dot * dot * latent_var[j];
    }
    return var + kResidualShare;
  };
  const double semantic_var = targets.semantic * targets.semantic;
  // Fixed query offset on the outlier pair (Q has massive values there too [Jin]); it
  // carries kQueryOutlierShare of the content logit variance.
  const float outlier_offset = static_cast<float>(
      std::sqrt(kQueryOutlierShare * semantic_var / (outlier_std * outlier_std)) /
      inv_sqrt_d);
  // Positional pattern: q_i = g c_i on the band pairs, so RoPE gives
  // logit(distance D) = band * mean_i cos(D theta_i): a decay planted explicitly [RR].
  const float positional_gain = static_cast<float>(
      targets.band / (inv_sqrt_d * kPositionalPairNorm * kPositionalPairNorm * band_pairs));
  const uint32_t group = spec.num_query_heads / spec.num_kv_heads;
  const uint32_t first_query = n - spec.num_queries;
  for (uint32_t g = 0; g < group; ++g) {
    const uint32_t query_head = kv_head * group + g;
    Rng qrng(StreamSeed(spec.seed, 0x5eed0000 + layer_index, query_head));
    // Query heads of a group share the head's directions with their own variation.
    std::vector<float> head_content(d), head_needle(d), head_outlier(d, 0.0f);
    for (uint32_t i = 0; i < d; ++i) {
      head_content[i] = semantic_dim[i] ? content_dir[i] + 0.08f * qrng.Normal() : 0.0f;
      head_needle[i] = semantic_dim[i] ? needle_dir[i] + 0.03f * qrng.Normal() : 0.0f;
      if (outlier_dim[i]) head_outlier[i] = outlier_offset * (qrng.Uniform() < 0.5 ? -0.7071f : 0.7071f);
    }
    Normalize(head_content);
    Normalize(head_needle);
    double needle_cos = 0;
    for (uint32_t i = 0; i < d; ++i) needle_cos += double{head_needle[i]} * needle_dir[i];
    const double head_sink = targets.sink + qrng.Jitter(0.3);
    for (uint32_t qi = 0; qi < spec.num_queries; ++qi) {
      const uint32_t p = first_query + qi;
      // Consecutive decode steps ask similar things: a small per-step perturbation.
      std::vector<float> w(d);
      for (uint32_t i = 0; i < d; ++i) w[i] = semantic_dim[i] ? head_content[i] + 0.1f * qrng.Normal() : 0.0f;
      Normalize(w);
      const float content_gain = static_cast<float>(
          std::sqrt((1.0 - kQueryOutlierShare) * semantic_var / content_variance(w)) / inv_sqrt_d);
      for (uint32_t i = 0; i < d; ++i) {
        pre[i] = content_gain * w[i] + head_outlier[i] + positional_gain * positional[i];
      }
      Rotate(rope, p, pre.data(), post.data());
      // The sink and needle components, set in post-RoPE coordinates: the query at p
      // points at the sink (position 0) and at the needles whatever its own position.
      // With base 5e5 the sink pairs barely rotate, so this is nearly what a pre-RoPE
      // query gives; with base 1e4 it stands for what a trained model learns.
      const float sink_gain = static_cast<float>(head_sink / (inv_sqrt_d * kSinkKeyNorm));
      const float needle_gain =
          type == HeadType::kRetrieval
              ? static_cast<float>(targets.needle / (inv_sqrt_d * kNeedleKeyNorm * needle_cos))
              : 0.0f;
      float* q = &out->queries[(size_t{qi} * spec.num_query_heads + query_head) * d];
      for (uint32_t i = 0; i < d; ++i) {
        q[i] = post[i] + sink_gain * sink_dir[i] + needle_gain * head_needle[i];
      }
    }
  }
}

}  // namespace

std::vector<std::vector<HeadType>> AssignHeadTypes(const LongContextSpec& spec) {
  const uint32_t heads = spec.num_layers * spec.num_kv_heads;
  auto round = [&](double f) { return static_cast<uint32_t>(std::lround(f * heads)); };
  uint32_t retrieval = round(spec.retrieval_fraction);
  uint32_t diffuse = round(spec.diffuse_fraction);
  if (heads >= 3) {
    // At least one of each where the shape allows, and at least one streaming head.
    if (spec.retrieval_fraction > 0) retrieval = std::max(1u, retrieval);
    if (spec.diffuse_fraction > 0) diffuse = std::max(1u, diffuse);
    while (retrieval + diffuse > heads - 1) {
      if (diffuse > 1) {
        --diffuse;
      } else {
        --retrieval;
      }
    }
  } else {
    retrieval = 0;
    diffuse = heads == 2 && spec.diffuse_fraction > 0 ? 1 : 0;
  }
  std::vector<std::vector<HeadType>> types(
      spec.num_layers, std::vector<HeadType>(spec.num_kv_heads, HeadType::kStreaming));
  // Leading dense layers: Quest keeps the first two layers dense; we make the first
  // `dense_layers` diffuse as long as the diffuse budget covers whole layers.
  const uint32_t dense = std::min({spec.dense_layers, diffuse / std::max(1u, spec.num_kv_heads),
                                   spec.num_layers > 0 ? spec.num_layers - 1 : 0});
  for (uint32_t l = 0; l < dense; ++l) {
    for (HeadType& t : types[l]) t = HeadType::kDiffuse;
  }
  diffuse -= dense * spec.num_kv_heads;
  std::vector<std::pair<uint32_t, uint32_t>> rest;
  for (uint32_t l = dense; l < spec.num_layers; ++l) {
    for (uint32_t h = 0; h < spec.num_kv_heads; ++h) rest.emplace_back(l, h);
  }
  Rng rng(StreamSeed(spec.seed, 0x7e4d, 0));
  for (size_t i = 0; i + 1 < rest.size(); ++i) {
    std::swap(rest[i], rest[i + rng.Below(static_cast<uint32_t>(rest.size() - i))]);
  }
  for (size_t i = 0; i < rest.size(); ++i) {
    const auto [l, h] = rest[i];
    if (i < retrieval) {
      types[l][h] = HeadType::kRetrieval;
    } else if (i < retrieval + diffuse) {
      types[l][h] = HeadType::kDiffuse;
    }
  }
  return types;
}

KvDataSet GenerateLongContext(const LongContextSpec& spec) {
  assert(spec.num_kv_heads > 0 && spec.num_query_heads % spec.num_kv_heads == 0);
  assert(spec.head_dim % 2 == 0 && spec.head_dim >= 32);
  assert(spec.num_tokens >= 256 + spec.num_queries && spec.num_queries > 0);
  assert(spec.sink_tokens >= 1 && spec.sink_tokens <= 16);
  KvDataSet data;
  data.name = "generated";
  data.num_kv_heads = spec.num_kv_heads;
  data.num_query_heads = spec.num_query_heads;
  data.head_dim = spec.head_dim;
  data.num_tokens = spec.num_tokens;
  data.rope_theta = spec.rope_theta;
  for (uint32_t i = 0; i < spec.num_queries; ++i) {
    data.query_positions.push_back(spec.num_tokens - spec.num_queries + i);
  }
  const RopeTable rope = MakeRopeTable(spec.num_tokens, spec.head_dim, spec.rope_theta);
  const SharedText text = MakeSharedText(spec);
  const std::vector<std::vector<HeadType>> types = AssignHeadTypes(spec);
  const Context ctx{&spec, &rope, &text, std::log(static_cast<double>(spec.num_tokens))};

  const size_t kv_size = size_t{spec.num_kv_heads} * spec.num_tokens * spec.head_dim;
  data.layers.resize(spec.num_layers);
  for (uint32_t l = 0; l < spec.num_layers; ++l) {
    KvLayer& layer = data.layers[l];
    layer.layer = l;
    layer.keys.resize(kv_size);
    layer.values.resize(kv_size);
    layer.queries.resize(size_t{spec.num_queries} * spec.num_query_heads * spec.head_dim);
    layer.head_types = types[l];
  }
  // One task per (layer, kv head), taken in order by up to hardware_concurrency threads;
  // every head has its own random stream, so the result does not depend on the threads.
  const uint32_t tasks = spec.num_layers * spec.num_kv_heads;
  const uint32_t threads =
      std::max(1u, std::min(tasks, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (uint32_t w = 0; w < threads; ++w) {
    pool.emplace_back([&, w] {
      for (uint32_t task = w; task < tasks; task += threads) {
        const uint32_t l = task / spec.num_kv_heads;
        const uint32_t h = task % spec.num_kv_heads;
        GenerateHead(ctx, l, h, types[l][h], &data.layers[l]);
      }
    });
  }
  for (std::thread& t : pool) t.join();
  return data;
}

}  // namespace pqkv::workload

#include "kernels/gqa_scoring.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "kernels/dim4_scan.h"
#include "kernels/fast_scan.h"
#include "kernels/vector_exp.h"

namespace pqkv::kernels {
namespace {

// Per-thread scratch, grown on demand and reused: fresh allocations of a few MiB per
// call would cost page faults on every retrieval.
template <typename T>
T* Scratch(std::vector<T>& buffer, size_t n) {
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

struct ScratchSpace {
  std::vector<float> logits, table, joined, combined, lut;
  std::vector<uint16_t> sums;
  std::vector<uint8_t> quantized;
  std::vector<uint32_t> histogram, present;
  std::vector<float> group_max, counts;
  std::vector<int8_t> weights;
  std::vector<int32_t> dots;
  std::vector<float> exps, chunk_max, chunk_weight;
  std::vector<double> chunk_z;
};
thread_local ScratchSpace scratch;

PqShape ShapeOf(const GqaScoringInput& in) {
  const PqCodeStore& c = *in.codes;
  return PqShape{c.subspaces(), 1 << c.bits(), in.head_dim / c.subspaces()};
}

// Exact logits of the tail tokens for query q, into out[num_exact].
void TailLogits(const GqaScoringInput& in, const float* q, float* out) {
  ExactScores(q, in.exact_keys, in.num_exact, in.head_dim, out);
}

// joined[c] = sum_m table[m][digit_m(c)] for every joined code c, built one sub-space at a
// time (each entry the previous sub-spaces' sum plus this one's: the order every joined
// logit is summed in).
void JoinedLogits(const PqShape& shape, const float* table, float* joined) {
  const int ksub = shape.centroids_per_subspace;
  std::copy(table, table + ksub, joined);
  size_t size = ksub;
  for (int m = 1; m < shape.subspaces; ++m) {
    const float* row = table + static_cast<size_t>(m) * ksub;
    for (int c = ksub - 1; c >= 0; --c) {
      for (size_t rest = 0; rest < size; ++rest) joined[c * size + rest] = joined[rest] + row[c];
    }
    size *= ksub;
  }
}

// The joined path's scores per distinct code, combined[joined_size()], and of the exact
// tail tokens, tail_scores[num_exact]; no pass over the encoded tokens.
bool ScoreJoinedCodes(const GqaScoringInput& in, float scale, float* combined, float* tail_scores,
                      double* log_z) {
  const PqCodeStore& codes = *in.codes;
  const PqShape shape = ShapeOf(in);
  const size_t distinct = codes.joined_size();
  const uint32_t* histogram = codes.joined_histogram();
  float* table =
      Scratch(scratch.table, static_cast<size_t>(shape.subspaces) * shape.centroids_per_subspace);
  float* joined = Scratch(scratch.joined, distinct);
  float* tail = Scratch(scratch.logits, in.num_exact);
  std::fill(combined, combined + distinct, 0.0f);
  std::fill(tail_scores, tail_scores + in.num_exact, 0.0f);
  for (int g = 0; g < in.group_size; ++g) {
    const float* q = in.group_queries + static_cast<size_t>(g) * in.head_dim;
    ComputeInnerProductTable(shape, q, in.centroids, table);
    JoinedLogits(shape, table, joined);
    TailLogits(in, q, tail);
    // Over the codes some token has, in four independent chains where one chain waited
    // on its own latency (distinct = 2^(M * bits): a multiple of 4 from 4 codes up). A
    // code no token has gets logit -inf: its own could lie far above the maximum, and
    // its exponential overflow to inf, which a count of 0 turns into a NaN normaliser.
    constexpr float kAbsent = -std::numeric_limits<float>::infinity();
    const size_t by_four = distinct / 4 * 4;
    const float tail_max = MaxOf(tail, in.num_exact);
    float max4[4] = {tail_max, tail_max, tail_max, tail_max};
    for (size_t c = 0; c < by_four; c += 4) {
      for (int j = 0; j < 4; ++j) {
        joined[c + j] = histogram[c + j] > 0 ? joined[c + j] : kAbsent;
        max4[j] = std::max(max4[j], joined[c + j]);
      }
    }
    for (size_t c = by_four; c < distinct; ++c) {
      joined[c] = histogram[c] > 0 ? joined[c] : kAbsent;
      max4[0] = std::max(max4[0], joined[c]);
    }
    const float max = std::max(std::max(max4[0], max4[1]), std::max(max4[2], max4[3]));
    if (!std::isfinite(max)) return false;
    ExpAndSum(joined, distinct, scale, scale * max, joined);
    double z4[4] = {ExpAndSum(tail, in.num_exact, scale, scale * max, tail), 0, 0, 0};
    for (size_t c = 0; c < by_four; c += 4) {
      for (int j = 0; j < 4; ++j) z4[j] += static_cast<double>(histogram[c + j]) * joined[c + j];
    }
    for (size_t c = by_four; c < distinct; ++c)
      z4[0] += static_cast<double>(histogram[c]) * joined[c];
    const double z = (z4[0] + z4[1]) + (z4[2] + z4[3]);
    if (log_z != nullptr) log_z[g] = static_cast<double>(scale * max) + std::log(z);
    const float inv_z = static_cast<float>(1.0 / z);
    for (size_t c = 0; c < distinct; ++c) combined[c] += joined[c] * inv_z;
    for (size_t t = 0; t < in.num_exact; ++t) tail_scores[t] += tail[t] * inv_z;
  }
  return true;
}

bool ScoreJoined(const GqaScoringInput& in, float scale, float* scores, double* log_z) {
  const PqCodeStore& codes = *in.codes;
  const size_t n = codes.size();
  float* combined = Scratch(scratch.combined, codes.joined_size());
  if (!ScoreJoinedCodes(in, scale, combined, scores + n, log_z)) return false;
  const uint16_t* joined_codes = codes.joined_codes();
  for (size_t t = 0; t < n; ++t) scores[t] = combined[joined_codes[t]];
  return true;
}

bool ScoreFastScan(const GqaScoringInput& in, float scale, float* scores, double* log_z) {
  const PqCodeStore& codes = *in.codes;
  const PqShape shape = ShapeOf(in);
  const int M = shape.subspaces;
  const int G = in.group_size;
  const size_t n = codes.size();
  const size_t padded = codes.num_blocks() * PqCodeStore::kBlockTokens;
  const size_t levels = static_cast<size_t>(M) * 255 + 1;  // possible uint16 sums
  float* table = Scratch(scratch.table, static_cast<size_t>(M) * 16);
  uint8_t* quantized = Scratch(scratch.quantized, static_cast<size_t>(G) * M * 16);
  uint16_t* sums = Scratch(scratch.sums, static_cast<size_t>(G) * padded);
  float* lut = Scratch(scratch.lut, static_cast<size_t>(G) * levels);
  float* tail = Scratch(scratch.logits, in.num_exact);
  std::vector<QuantizedTable> params(G);
  for (int g = 0; g < G; ++g) {
    ComputeInnerProductTable(shape, in.group_queries + static_cast<size_t>(g) * in.head_dim,
                             in.centroids, table);
    params[g] = QuantizeTable(table, M, quantized + static_cast<size_t>(g) * M * 16);
  }
  FastScanAccumulate(codes.fast_scan_blocks(), codes.num_blocks(), M, quantized, G, sums, padded);

  // Per query head, the histogram of its uint16 sums gives both the largest logit and
  // the softmax normaliser with one exponential per level instead of one per token.
  std::fill(scores + n, scores + n + in.num_exact, 0.0f);
  uint32_t* histogram = Scratch(scratch.histogram, levels);
  for (int g = 0; g < G; ++g) {
    const uint16_t* s = sums + g * padded;
    std::fill(histogram, histogram + levels, 0u);
    for (size_t t = 0; t < n; ++t) ++histogram[s[t]];
    size_t top = levels - 1;
    while (top > 0 && histogram[top] == 0) --top;
    TailLogits(in, in.group_queries + static_cast<size_t>(g) * in.head_dim, tail);
    const float max = std::max(params[g].offset + params[g].scale * top, MaxOf(tail, in.num_exact));
    if (!std::isfinite(max) || !std::isfinite(params[g].scale)) return false;
    // lut[v] = exp(scale * logit(v) - scale * max), logit(v) = offset + step * v.
    float* l = lut + g * levels;
    for (size_t v = 0; v < levels; ++v) l[v] = params[g].offset + params[g].scale * v;
    ExpAndSum(l, levels, scale, scale * max, l);
    double z = ExpAndSum(tail, in.num_exact, scale, scale * max, tail);
    for (size_t v = 0; v <= top; ++v) z += static_cast<double>(histogram[v]) * l[v];
    if (log_z != nullptr) log_z[g] = static_cast<double>(scale * max) + std::log(z);
    const float inv_z = static_cast<float>(1.0 / z);
    for (size_t v = 0; v < levels; ++v) l[v] *= inv_z;
    for (size_t t = 0; t < in.num_exact; ++t) scores[n + t] += tail[t] * inv_z;
  }
  if (G == 4) {  // the common GQA group: an unrolled combine
    const float *l0 = lut, *l1 = lut + levels, *l2 = lut + 2 * levels, *l3 = lut + 3 * levels;
    const uint16_t *s0 = sums, *s1 = sums + padded, *s2 = sums + 2 * padded,
                   *s3 = sums + 3 * padded;
    for (size_t t = 0; t < n; ++t) scores[t] = (l0[s0[t]] + l1[s1[t]]) + (l2[s2[t]] + l3[s3[t]]);
    return true;
  }
  for (size_t t = 0; t < n; ++t) {
    float score = 0;
    for (int g = 0; g < G; ++g) score += lut[g * levels + sums[g * padded + t]];
    scores[t] = score;
  }
  return true;
}

// Per-dimension 4-bit codes: each query head's int8 weights (QuantizeDim4Query), then
// chunk by chunk the integer dot products of its tokens (Dim4Dots) and their exponentials
// relative to the chunk's own largest logit, so that the exponentials run while the next
// codes stream in and nothing waits for a first pass over all tokens. The chunks'
// maxima and normalisers then give each query head's normaliser, and one pass combines
// the heads. Scores carry the int8 query's rounding.
constexpr size_t kDim4ChunkTokens = 512;

bool ScoreDim4(const GqaScoringInput& in, float scale, float* scores, double* log_z) {
  const PqCodeStore& codes = *in.codes;
  const int D = in.head_dim, G = in.group_size;
  const size_t n = codes.size();
  const size_t chunks = (n + kDim4ChunkTokens - 1) / kDim4ChunkTokens;
  int8_t* weights = Scratch(scratch.weights, static_cast<size_t>(G) * D);
  int32_t* dots = Scratch(scratch.dots, static_cast<size_t>(G) * kDim4ChunkTokens);
  float* exps = Scratch(scratch.exps, static_cast<size_t>(G) * n);
  // [query head][chunk]: the chunk's largest logit, its normaliser relative to that, and
  // at the end the weight of its exponentials in the score.
  float* chunk_max = Scratch(scratch.chunk_max, static_cast<size_t>(G) * chunks);
  double* chunk_z = Scratch(scratch.chunk_z, static_cast<size_t>(G) * chunks);
  float* chunk_weight = Scratch(scratch.chunk_weight, static_cast<size_t>(G) * chunks);
  float* tail = Scratch(scratch.logits, in.num_exact);
  std::vector<Dim4Query> params(G);
  for (int g = 0; g < G; ++g) {
    params[g] = QuantizeDim4Query(in.group_queries + static_cast<size_t>(g) * D, in.centroids, D,
                                  weights + static_cast<size_t>(g) * D);
  }
  const size_t block_bytes = Dim4BlockBytes(D);
  for (size_t c = 0; c < chunks; ++c) {
    const size_t begin = c * kDim4ChunkTokens, len = std::min(kDim4ChunkTokens, n - begin);
    Dim4Dots(codes.dim4_blocks() + begin / kDim4BlockTokens * block_bytes,
             (len + kDim4BlockTokens - 1) / kDim4BlockTokens, D, weights, G, dots,
             kDim4ChunkTokens);
    for (int g = 0; g < G; ++g) {
      const int32_t* d = dots + g * kDim4ChunkTokens;
      const int32_t top = MaxOfInt32(d, len);
      const float step = scale * params[g].scale;
      chunk_max[g * chunks + c] = params[g].offset + params[g].scale * static_cast<float>(top);
      chunk_z[g * chunks + c] =
          ExpAndSumInt32(d, len, step, step * static_cast<float>(top), exps + g * n + begin);
    }
  }

  std::fill(scores + n, scores + n + in.num_exact, 0.0f);
  for (int g = 0; g < G; ++g) {
    TailLogits(in, in.group_queries + static_cast<size_t>(g) * D, tail);
    const float* m = chunk_max + g * chunks;
    const float max = std::max(MaxOf(m, chunks), MaxOf(tail, in.num_exact));
    if (!std::isfinite(max) || !std::isfinite(params[g].scale)) return false;
    double z = ExpAndSum(tail, in.num_exact, scale, scale * max, tail);
    float* w = chunk_weight + g * chunks;
    for (size_t c = 0; c < chunks; ++c) {
      w[c] = std::exp(scale * (m[c] - max));
      z += chunk_z[g * chunks + c] * w[c];
    }
    if (log_z != nullptr) log_z[g] = static_cast<double>(scale * max) + std::log(z);
    const float inv_z = static_cast<float>(1.0 / z);
    for (size_t c = 0; c < chunks; ++c) w[c] *= inv_z;
    for (size_t t = 0; t < in.num_exact; ++t) scores[n + t] += tail[t] * inv_z;
  }
  for (size_t c = 0; c < chunks; ++c) {
    const size_t begin = c * kDim4ChunkTokens, end = std::min(begin + kDim4ChunkTokens, n);
    if (G == 4) {  // the common GQA group: an unrolled combine
      const float *e0 = exps, *e1 = exps + n, *e2 = exps + 2 * n, *e3 = exps + 3 * n;
      const float w0 = chunk_weight[c], w1 = chunk_weight[chunks + c],
                  w2 = chunk_weight[2 * chunks + c], w3 = chunk_weight[3 * chunks + c];
      for (size_t t = begin; t < end; ++t) {
        scores[t] = (e0[t] * w0 + e1[t] * w1) + (e2[t] * w2 + e3[t] * w3);
      }
      continue;
    }
    for (size_t t = begin; t < end; ++t) {
      float score = 0;
      for (int g = 0; g < G; ++g) score += exps[g * n + t] * chunk_weight[g * chunks + c];
      scores[t] = score;
    }
  }
  return true;
}

// Generic and exact-only. The group's tables are interleaved, [m][code][query head], so
// one token's logits for every query head come from M contiguous rows; logits are
// computed in L1-sized chunks of [token][query head], twice: once for each query head's
// max and normaliser (online softmax), once to write the scores. No per-query-head
// array of n logits travels through memory.
constexpr size_t kChunkTokens = 512;

// Logits of tokens [begin, end) from codes: out[(t - begin) * G + g]. kM, kG > 0 fix
// the sub-space count and group size at compile time so the loops unroll and vectorise.
template <int kM, int kG>
void CodeLogits(const uint8_t* codes, int M, int ksub, const float* tables, int G, size_t begin,
                size_t end, float* out) {
  const int subspaces = kM > 0 ? kM : M;
  const int group = kG > 0 ? kG : G;
  for (size_t t = begin; t < end; ++t) {
    const uint8_t* code = codes + t * subspaces;
    float* dst = out + (t - begin) * group;
    for (int g = 0; g < group; ++g) dst[g] = 0;
    for (int m = 0; m < subspaces; ++m) {
      const float* row = tables + (static_cast<size_t>(m) * ksub + code[m]) * group;
      for (int g = 0; g < group; ++g) dst[g] += row[g];
    }
  }
}

#if defined(__SSE2__)
// The common GQA group of 4 query heads: one 128-bit row per sub-space (SSE is part of
// x86-64 itself, so this needs no dispatch). Sums in the same order as the scalar loop.
template <int kM>
void CodeLogitsGroup4(const uint8_t* codes, int M, int ksub, const float* tables, size_t begin,
                      size_t end, float* out) {
  const int subspaces = kM > 0 ? kM : M;
  for (size_t t = begin; t < end; ++t) {
    const uint8_t* code = codes + t * subspaces;
    __m128 acc = _mm_loadu_ps(tables + static_cast<size_t>(code[0]) * 4);
    for (int m = 1; m < subspaces; ++m) {
      acc = _mm_add_ps(acc, _mm_loadu_ps(tables + (static_cast<size_t>(m) * ksub + code[m]) * 4));
    }
    _mm_storeu_ps(out + (t - begin) * 4, acc);
  }
}
#endif

template <int kG>
void CodeLogitsForGroup(const uint8_t* codes, int M, int ksub, const float* tables, int G,
                        size_t begin, size_t end, float* out) {
  switch (M) {
    case 2:
      return CodeLogits<2, kG>(codes, M, ksub, tables, G, begin, end, out);
    case 4:
      return CodeLogits<4, kG>(codes, M, ksub, tables, G, begin, end, out);
    case 8:
      return CodeLogits<8, kG>(codes, M, ksub, tables, G, begin, end, out);
    default:
      return CodeLogits<0, kG>(codes, M, ksub, tables, G, begin, end, out);
  }
}

// Logits of tokens [begin, end) for every query head, [token][query head].
void ChunkLogits(const GqaScoringInput& in, const float* tables, size_t begin, size_t end,
                 float* out) {
  const size_t encoded = in.codes ? in.codes->size() : 0;
  const int G = in.group_size;
  const size_t code_end = std::min(end, encoded);
  if (begin < code_end) {
    const int M = in.codes->subspaces();
    const int ksub = 1 << in.codes->bits();
    const uint8_t* codes = in.codes->codes();
    switch (G) {
      case 4:
#if defined(__SSE2__)
        switch (M) {
          case 2:
            CodeLogitsGroup4<2>(codes, M, ksub, tables, begin, code_end, out);
            break;
          case 4:
            CodeLogitsGroup4<4>(codes, M, ksub, tables, begin, code_end, out);
            break;
          case 8:
            CodeLogitsGroup4<8>(codes, M, ksub, tables, begin, code_end, out);
            break;
          default:
            CodeLogitsGroup4<0>(codes, M, ksub, tables, begin, code_end, out);
            break;
        }
#else
        CodeLogitsForGroup<4>(codes, M, ksub, tables, G, begin, code_end, out);
#endif
        break;
      case 8:
        CodeLogitsForGroup<8>(codes, M, ksub, tables, G, begin, code_end, out);
        break;
      default:
        CodeLogitsForGroup<0>(codes, M, ksub, tables, G, begin, code_end, out);
        break;
    }
  }
  for (size_t t = std::max(begin, encoded); t < end; ++t) {
    const float* key = in.exact_keys + (t - encoded) * in.head_dim;
    for (int g = 0; g < G; ++g) {
      ExactScores(in.group_queries + static_cast<size_t>(g) * in.head_dim, key, 1, in.head_dim,
                  out + (t - begin) * G + g);
    }
  }
}

bool ScoreByLogits(const GqaScoringInput& in, float scale, float* scores, double* log_z) {
  const size_t encoded = in.codes ? in.codes->size() : 0;
  const size_t n = encoded + in.num_exact;
  const int G = in.group_size;
  float* tables = nullptr;
  if (encoded > 0) {
    const PqShape shape = ShapeOf(in);
    const size_t table_size = static_cast<size_t>(shape.subspaces) * shape.centroids_per_subspace;
    float* table = Scratch(scratch.table, table_size);
    tables = Scratch(scratch.joined, G * table_size);
    for (int g = 0; g < G; ++g) {
      ComputeInnerProductTable(shape, in.group_queries + static_cast<size_t>(g) * in.head_dim,
                               in.centroids, table);
      for (size_t e = 0; e < table_size; ++e) tables[e * G + g] = table[e];
    }
  }
  float* chunk = Scratch(scratch.logits, G * kChunkTokens);
  std::vector<float> max(G, -std::numeric_limits<float>::infinity()), shift(G);
  std::vector<double> z(G, 0.0);
  for (size_t begin = 0; begin < n; begin += kChunkTokens) {
    const size_t len = std::min(kChunkTokens, n - begin);
    ChunkLogits(in, tables, begin, begin + len, chunk);
    std::vector<float>& chunk_max = scratch.group_max;
    chunk_max.assign(G, -std::numeric_limits<float>::infinity());
    if (G == 4) {  // the common group, unrolled
      float m0 = chunk_max[0], m1 = m0, m2 = m0, m3 = m0;
      for (size_t i = 0; i < len; ++i) {
        m0 = std::max(m0, chunk[i * 4]);
        m1 = std::max(m1, chunk[i * 4 + 1]);
        m2 = std::max(m2, chunk[i * 4 + 2]);
        m3 = std::max(m3, chunk[i * 4 + 3]);
      }
      chunk_max = {m0, m1, m2, m3};
    } else {
      for (size_t i = 0; i < len; ++i) {
        for (int g = 0; g < G; ++g) chunk_max[g] = std::max(chunk_max[g], chunk[i * G + g]);
      }
    }
    for (int g = 0; g < G; ++g) {
      if (chunk_max[g] > max[g]) {
        if (z[g] > 0) z[g] *= std::exp(static_cast<double>(scale) * (max[g] - chunk_max[g]));
        max[g] = chunk_max[g];
      }
      shift[g] = scale * max[g];
    }
    ExpAndSumGrouped(chunk, len, G, scale, shift.data(), chunk, z.data());
  }
  for (int g = 0; g < G; ++g) {
    if (!std::isfinite(max[g])) return false;
  }
  std::vector<float> inv_z(G);
  for (int g = 0; g < G; ++g) inv_z[g] = static_cast<float>(1.0 / z[g]);
  if (log_z != nullptr) {
    for (int g = 0; g < G; ++g) log_z[g] = static_cast<double>(shift[g]) + std::log(z[g]);
  }
  std::vector<double> unused(G);
  for (size_t begin = 0; begin < n; begin += kChunkTokens) {
    const size_t len = std::min(kChunkTokens, n - begin);
    ChunkLogits(in, tables, begin, begin + len, chunk);
    ExpAndSumGrouped(chunk, len, G, scale, shift.data(), chunk, unused.data());
    if (G == 4) {  // the common group, unrolled
      const float w0 = inv_z[0], w1 = inv_z[1], w2 = inv_z[2], w3 = inv_z[3];
      for (size_t i = 0; i < len; ++i) {
        const float* e = chunk + i * 4;
        scores[begin + i] = (e[0] * w0 + e[1] * w1) + (e[2] * w2 + e[3] * w3);
      }
    } else {
      for (size_t i = 0; i < len; ++i) {
        float score = 0;
        for (int g = 0; g < G; ++g) score += chunk[i * G + g] * inv_z[g];
        scores[begin + i] = score;
      }
    }
  }
  return true;
}

}  // namespace

const char* ScanPathName(ScanPath path) {
  switch (path) {
    case ScanPath::kJoined:
      return "joined";
    case ScanPath::kFastScan:
      return "fast-scan";
    case ScanPath::kDim4:
      return "dim4";
    case ScanPath::kGeneric:
      return "generic";
    case ScanPath::kExactOnly:
      return "exact";
  }
  return "unknown";
}

ScanPath ChooseScanPath(const PqCodeStore* codes) {
  if (codes == nullptr || codes->size() == 0) return ScanPath::kExactOnly;
  if (codes->has_joined()) return ScanPath::kJoined;
  if (codes->has_dim4()) return ScanPath::kDim4;
  if (codes->has_fast_scan()) return ScanPath::kFastScan;
  return ScanPath::kGeneric;
}

bool ScoreGqa(const GqaScoringInput& input, float* scores, double* log_normalisers) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(input.head_dim));
  switch (ChooseScanPath(input.codes)) {
    case ScanPath::kJoined:
      return ScoreJoined(input, scale, scores, log_normalisers);
    case ScanPath::kFastScan:
      return ScoreFastScan(input, scale, scores, log_normalisers);
    case ScanPath::kDim4:
      return ScoreDim4(input, scale, scores, log_normalisers);
    case ScanPath::kGeneric:
    case ScanPath::kExactOnly:
      return ScoreByLogits(input, scale, scores, log_normalisers);
  }
  return false;
}

bool ScoreGqaJoined(const GqaScoringInput& input, float* code_scores, float* exact_scores,
                    double* log_normalisers) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(input.head_dim));
  return ScoreJoinedCodes(input, scale, code_scores, exact_scores, log_normalisers);
}

void GqaCodeLogits(const GqaScoringInput& input, const uint32_t* positions, size_t count,
                   float* out) {
  if (count == 0) return;
  const PqShape shape = ShapeOf(input);
  const int M = shape.subspaces, ksub = shape.centroids_per_subspace;
  const uint8_t* codes = input.codes->codes();
  const ScanPath path = ChooseScanPath(input.codes);
  const bool fast_scan = path == ScanPath::kFastScan;
  if (path == ScanPath::kDim4) {
    // As ScoreDim4: offset + scale x the integer dot product with the int8 weights.
    std::vector<int8_t> weights(static_cast<size_t>(input.head_dim));
    std::vector<uint8_t> code(static_cast<size_t>(M));
    for (int g = 0; g < input.group_size; ++g) {
      const Dim4Query params =
          QuantizeDim4Query(input.group_queries + static_cast<size_t>(g) * input.head_dim,
                            input.centroids, input.head_dim, weights.data());
      float* dst = out + static_cast<size_t>(g) * count;
      for (size_t i = 0; i < count; ++i) {
        input.codes->CopyCodes(positions[i], 1, code.data());
        dst[i] = params.offset + params.scale * static_cast<float>(Dim4Dot(
                                                    code.data(), weights.data(), input.head_dim));
      }
    }
    return;
  }
  if (M == 2 && input.codes->has_joined()) {
    // PQCache's 2 x 6: a re-rank looks up thousands of scattered tokens, so every query
    // head's tables first, then one pass over the tokens reading each joined code (which
    // the scan has just read, so it is in cache) once for all heads.
    const int G = input.group_size, bits = input.codes->bits();
    std::vector<float> tables(static_cast<size_t>(G) * 2 * ksub);
    for (int g = 0; g < G; ++g) {
      ComputeInnerProductTable(shape, input.group_queries + static_cast<size_t>(g) * input.head_dim,
                               input.centroids, tables.data() + static_cast<size_t>(g) * 2 * ksub);
    }
    const uint16_t* joined = input.codes->joined_codes();
    const uint32_t low_mask = (uint32_t{1} << bits) - 1;
    for (size_t i = 0; i < count; ++i) {
      const uint32_t code = joined[positions[i]];
      const uint32_t first = code & low_mask, second = ksub + (code >> bits);
      for (int g = 0; g < G; ++g) {
        const float* table = tables.data() + static_cast<size_t>(g) * 2 * ksub;
        out[static_cast<size_t>(g) * count + i] = table[first] + table[second];
      }
    }
    return;
  }
  std::vector<float> table(static_cast<size_t>(M) * ksub);
  std::vector<uint8_t> quantized(fast_scan ? static_cast<size_t>(M) * 16 : 0);
  for (int g = 0; g < input.group_size; ++g) {
    ComputeInnerProductTable(shape, input.group_queries + static_cast<size_t>(g) * input.head_dim,
                             input.centroids, table.data());
    float* dst = out + static_cast<size_t>(g) * count;
    if (fast_scan) {
      // As ScoreFastScan: offset + step * (the uint16 sum of quantised entries).
      const QuantizedTable params = QuantizeTable(table.data(), M, quantized.data());
      for (size_t i = 0; i < count; ++i) {
        const uint8_t* code = codes + static_cast<size_t>(positions[i]) * M;
        size_t sum = 0;
        for (int m = 0; m < M; ++m) sum += quantized[m * 16 + code[m]];
        dst[i] = params.offset + params.scale * sum;
      }
      continue;
    }
    // As the joined and generic scans: sub-space 0's entry, then each next one added.
    for (size_t i = 0; i < count; ++i) {
      const uint8_t* code = codes + static_cast<size_t>(positions[i]) * M;
      float logit = table[code[0]];
      for (int m = 1; m < M; ++m) logit += table[static_cast<size_t>(m) * ksub + code[m]];
      dst[i] = logit;
    }
  }
}

void GqaCodeMass(const GqaScoringInput& input, const uint32_t* positions, size_t count,
                 const double* log_normalisers, double* mass) {
  const int G = input.group_size;
  std::fill(mass, mass + G, 0.0);
  if (count == 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(input.head_dim));
  if (ChooseScanPath(input.codes) != ScanPath::kJoined) {
    float* logits = Scratch(scratch.logits, static_cast<size_t>(G) * count);
    float* exps = Scratch(scratch.exps, count);
    GqaCodeLogits(input, positions, count, logits);
    for (int g = 0; g < G; ++g) {
      if (!std::isfinite(log_normalisers[g])) continue;
      mass[g] = ExpAndSum(logits + static_cast<size_t>(g) * count, count, scale,
                          static_cast<float>(log_normalisers[g]), exps);
    }
    return;
  }
  // sum_i exp(logit(code_i)) = sum_c n(c) exp(logit(c)) over the codes the tokens have,
  // n(c) their counts: a re-rank's thousands of tokens share the 2^(M x bits) codes. The
  // codes' logits are built as the scan builds them (JoinedLogits), so they are the
  // same floats. Only present codes are exponentiated: an absent one's logit can lie far
  // below (an exponential in the denormals, each a slow microcode assist) or above (inf).
  const PqShape shape = ShapeOf(input);
  const int ksub = shape.centroids_per_subspace;
  const size_t distinct = input.codes->joined_size();
  uint32_t* histogram = Scratch(scratch.histogram, distinct);
  uint32_t* present = Scratch(scratch.present, distinct);
  float* counts = Scratch(scratch.counts, distinct);
  float* table = Scratch(scratch.table, static_cast<size_t>(shape.subspaces) * ksub);
  float* joined = Scratch(scratch.joined, distinct);
  float* logits = Scratch(scratch.logits, distinct);
  std::fill(histogram, histogram + distinct, 0u);
  const uint16_t* codes = input.codes->joined_codes();
  for (size_t i = 0; i < count; ++i) ++histogram[codes[positions[i]]];
  size_t num_present = 0;
  for (size_t c = 0; c < distinct; ++c) {  // branch-free: presence is data
    present[num_present] = static_cast<uint32_t>(c);
    counts[num_present] = static_cast<float>(histogram[c]);
    num_present += histogram[c] > 0;
  }
  for (int g = 0; g < G; ++g) {
    if (!std::isfinite(log_normalisers[g])) continue;
    ComputeInnerProductTable(shape, input.group_queries + static_cast<size_t>(g) * input.head_dim,
                             input.centroids, table);
    JoinedLogits(shape, table, joined);
    for (size_t j = 0; j < num_present; ++j) logits[j] = joined[present[j]];
    ExpAndSum(logits, num_present, scale, static_cast<float>(log_normalisers[g]), logits);
    double sums[4] = {0, 0, 0, 0};  // four chains: one waited on its own latency
    const size_t by_four = num_present / 4 * 4;
    for (size_t j = 0; j < by_four; j += 4) {
      for (int l = 0; l < 4; ++l) sums[l] += static_cast<double>(counts[j + l] * logits[j + l]);
    }
    for (size_t j = by_four; j < num_present; ++j) {
      sums[0] += static_cast<double>(counts[j] * logits[j]);
    }
    mass[g] = (sums[0] + sums[1]) + (sums[2] + sums[3]);
  }
}

}  // namespace pqkv::kernels

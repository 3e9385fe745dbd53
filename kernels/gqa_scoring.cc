#include "kernels/gqa_scoring.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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

void ScoreJoined(const GqaScoringInput& in, float scale, float* scores) {
  const PqCodeStore& codes = *in.codes;
  const PqShape shape = ShapeOf(in);
  const size_t n = codes.size();
  const size_t distinct = codes.joined_size();
  const uint32_t* histogram = codes.joined_histogram();
  float* table =
      Scratch(scratch.table, static_cast<size_t>(shape.subspaces) * shape.centroids_per_subspace);
  float* joined = Scratch(scratch.joined, distinct);
  float* combined = Scratch(scratch.combined, distinct);
  float* tail = Scratch(scratch.logits, in.num_exact);
  std::fill(combined, combined + distinct, 0.0f);
  std::fill(scores + n, scores + n + in.num_exact, 0.0f);
  for (int g = 0; g < in.group_size; ++g) {
    const float* q = in.group_queries + static_cast<size_t>(g) * in.head_dim;
    ComputeInnerProductTable(shape, q, in.centroids, table);
    // joined[c] = sum_m table[m][digit_m(c)], built one sub-space at a time.
    std::copy(table, table + shape.centroids_per_subspace, joined);
    size_t size = shape.centroids_per_subspace;
    for (int m = 1; m < shape.subspaces; ++m) {
      const float* row = table + m * shape.centroids_per_subspace;
      for (int c = shape.centroids_per_subspace - 1; c >= 0; --c) {
        for (size_t rest = 0; rest < size; ++rest) joined[c * size + rest] = joined[rest] + row[c];
      }
      size *= shape.centroids_per_subspace;
    }
    TailLogits(in, q, tail);
    float max = MaxOf(tail, in.num_exact);
    for (size_t c = 0; c < distinct; ++c) {
      if (histogram[c] > 0) max = std::max(max, joined[c]);
    }
    ExpAndSum(joined, distinct, scale, scale * max, joined);
    double z = ExpAndSum(tail, in.num_exact, scale, scale * max, tail);
    for (size_t c = 0; c < distinct; ++c) z += static_cast<double>(histogram[c]) * joined[c];
    const float inv_z = static_cast<float>(1.0 / z);
    for (size_t c = 0; c < distinct; ++c) combined[c] += joined[c] * inv_z;
    for (size_t t = 0; t < in.num_exact; ++t) scores[n + t] += tail[t] * inv_z;
  }
  const uint16_t* joined_codes = codes.joined_codes();
  for (size_t t = 0; t < n; ++t) scores[t] = combined[joined_codes[t]];
}

void ScoreFastScan(const GqaScoringInput& in, float scale, float* scores) {
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

  std::fill(scores + n, scores + n + in.num_exact, 0.0f);
  for (int g = 0; g < G; ++g) {
    const uint16_t* s = sums + g * padded;
    const uint16_t top = n > 0 ? *std::max_element(s, s + n) : 0;
    TailLogits(in, in.group_queries + static_cast<size_t>(g) * in.head_dim, tail);
    const float max = std::max(params[g].offset + params[g].scale * top, MaxOf(tail, in.num_exact));
    // lut[v] = exp(scale * logit(v) - scale * max), logit(v) = offset + step * v.
    float* l = lut + g * levels;
    for (size_t v = 0; v < levels; ++v) l[v] = params[g].offset + params[g].scale * v;
    ExpAndSum(l, levels, scale, scale * max, l);
    double z = ExpAndSum(tail, in.num_exact, scale, scale * max, tail);
    for (size_t t = 0; t < n; ++t) z += l[s[t]];
    const float inv_z = static_cast<float>(1.0 / z);
    for (size_t v = 0; v < levels; ++v) l[v] *= inv_z;
    for (size_t t = 0; t < in.num_exact; ++t) scores[n + t] += tail[t] * inv_z;
  }
  for (size_t t = 0; t < n; ++t) {
    float score = 0;
    for (int g = 0; g < G; ++g) score += lut[g * levels + sums[g * padded + t]];
    scores[t] = score;
  }
}

// Generic and exact-only: materialise every query head's logits, then softmax-sum.
void ScoreByLogits(const GqaScoringInput& in, float scale, float* scores) {
  const size_t encoded = in.codes ? in.codes->size() : 0;
  const size_t n = encoded + in.num_exact;
  const int G = in.group_size;
  float* logits = Scratch(scratch.logits, static_cast<size_t>(G) * n);
  if (encoded > 0) {
    const PqShape shape = ShapeOf(in);
    const int M = shape.subspaces;
    const size_t table_size = static_cast<size_t>(M) * shape.centroids_per_subspace;
    float* tables = Scratch(scratch.table, G * table_size);
    for (int g = 0; g < G; ++g) {
      ComputeInnerProductTable(shape, in.group_queries + static_cast<size_t>(g) * in.head_dim,
                               in.centroids, tables + g * table_size);
    }
    // One pass over the codes for all query heads.
    const uint8_t* codes = in.codes->codes();
    for (size_t t = 0; t < encoded; ++t) {
      const uint8_t* code = codes + t * M;
      for (int g = 0; g < G; ++g) {
        const float* table = tables + g * table_size;
        float sum = 0;
        for (int m = 0; m < M; ++m) sum += table[m * shape.centroids_per_subspace + code[m]];
        logits[g * n + t] = sum;
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    TailLogits(in, in.group_queries + static_cast<size_t>(g) * in.head_dim,
               logits + g * n + encoded);
  }
  std::fill(scores, scores + n, 0.0f);
  for (int g = 0; g < G; ++g) {
    float* l = logits + g * n;
    const float max = MaxOf(l, n);
    const float inv_z = static_cast<float>(1.0 / ExpAndSum(l, n, scale, scale * max, l));
    for (size_t t = 0; t < n; ++t) scores[t] += l[t] * inv_z;
  }
}

}  // namespace

const char* ScanPathName(ScanPath path) {
  switch (path) {
    case ScanPath::kJoined:
      return "joined";
    case ScanPath::kFastScan:
      return "fast-scan";
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
  if (codes->has_fast_scan()) return ScanPath::kFastScan;
  return ScanPath::kGeneric;
}

void ScoreGqa(const GqaScoringInput& input, float* scores) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(input.head_dim));
  switch (ChooseScanPath(input.codes)) {
    case ScanPath::kJoined:
      return ScoreJoined(input, scale, scores);
    case ScanPath::kFastScan:
      return ScoreFastScan(input, scale, scores);
    case ScanPath::kGeneric:
    case ScanPath::kExactOnly:
      return ScoreByLogits(input, scale, scores);
  }
}

}  // namespace pqkv::kernels

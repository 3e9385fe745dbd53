// Generated K/V with planted high-attention tokens, and the exact-attention reference
// that retrieval quality is measured against. Used by the demo worker and the tests.
//
// Per kv head, a random unit direction u: the head's query heads point along u (plus
// noise), and `planted_per_head` tokens at random candidate positions have keys along u,
// so they carry most of the attention mass; every other key is Gaussian noise. Values
// are Gaussian. All numbers are exactly representable in fp16 (rounded at generation),
// so fp32 references match what a server stores in fp16.
//
// Pure functions; deterministic for a given seed.
#ifndef PQKV_WORKLOAD_PLANTED_KV_H_
#define PQKV_WORKLOAD_PLANTED_KV_H_

#include <cstdint>
#include <vector>

namespace pqkv::workload {

struct PlantedKvSpec {
  uint32_t num_kv_heads = 2;
  uint32_t num_query_heads = 8;
  uint32_t head_dim = 128;
  uint32_t num_tokens = 8192;
  uint32_t planted_per_head = 64;
  // Planted tokens avoid the first `sinks` and last `recent` positions.
  uint32_t sinks = 32;
  uint32_t recent = 64;
  // Norm of planted keys and of queries along u.
  float planted_key_norm = 8.0f;
  float query_norm = 10.0f;
  uint64_t seed = 1;
};

struct LayerData {
  std::vector<float> keys;                     // fp32 [kv_head][token][head_dim]
  std::vector<float> values;                   // fp32 [kv_head][token][head_dim]
  std::vector<float> query;                    // fp32 [query_head][head_dim]
  std::vector<std::vector<uint32_t>> planted;  // per kv head, ascending positions
  std::vector<std::vector<float>> directions;  // per kv head, unit vector u
};

LayerData GeneratePlantedLayer(const PlantedKvSpec& spec, uint32_t layer);

// One key row along `direction` with norm `norm`, plus small noise (fp16-exact).
std::vector<float> PlantedKey(const std::vector<float>& direction, float norm, uint64_t seed);

// fp32 -> fp16 bytes (little-endian), element by element.
std::vector<uint16_t> ToHalf(const std::vector<float>& values);

// The exact GQA score of each of n tokens for one kv head: the sum over its group's
// query heads of softmax(q . k / sqrt(dim)) over all n tokens.
// keys: fp32 [n][dim]; group_queries: fp32 [group_size][dim].
std::vector<float> ExactGqaScores(const float* keys, uint32_t n, const float* group_queries,
                                  uint32_t group_size, uint32_t dim);

// Sum of scores at positions.
double MassOf(const std::vector<float>& scores, const std::vector<uint32_t>& positions);

// Fraction of `reference` positions that also appear in `selected`.
double Recall(const std::vector<uint32_t>& selected, const std::vector<uint32_t>& reference);

}  // namespace pqkv::workload

#endif  // PQKV_WORKLOAD_PLANTED_KV_H_

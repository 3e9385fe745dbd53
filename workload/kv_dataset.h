// KvDataSet: the K/V and queries of a decode trace, per layer, in the form every
// quality tool reads: captured from a real model (tools/capture, loaded by
// kv_dataset_io.h) or generated (long_context_kv.h).
//
// A trace covers positions [0, num_tokens). Queries are given for `query_positions`
// (ascending); the query at position p attends to keys [0, p], its own key included,
// as in a decode step. Keys and queries are post-RoPE in the Hugging Face layout
// (rotate_half: RoPE pair i is dims (i, i + head_dim / 2)). Query head h belongs to kv
// head h / (num_query_heads / num_kv_heads).
//
// Plain data; no invariants beyond the sizes stated per field.
#ifndef PQKV_WORKLOAD_KV_DATASET_H_
#define PQKV_WORKLOAD_KV_DATASET_H_

#include <cstdint>
#include <string>
#include <vector>

namespace pqkv::workload {

// What a kv head's attention looks like: by construction for generated data, by its
// measured statistics for captured data (ClassifyHead in kv_statistics.h).
enum class HeadType { kStreaming, kRetrieval, kDiffuse };

const char* HeadTypeName(HeadType type);  // "streaming", "retrieval", "diffuse"

struct KvDataSet;

struct KvLayer {
  uint32_t layer = 0;                // index in the model
  std::vector<uint16_t> keys;        // fp16 bits [kv_head][token][head_dim]
  std::vector<uint16_t> values;      // fp16 bits [kv_head][token][head_dim]
  std::vector<float> queries;        // fp32 [query_index][query_head][head_dim]
  std::vector<HeadType> head_types;  // per kv head; empty when not known (captured data)
};

struct KvDataSet {
  std::string name;  // "generated" or the capture's model name
  uint32_t num_kv_heads = 0;
  uint32_t num_query_heads = 0;
  uint32_t head_dim = 0;
  uint32_t num_tokens = 0;                // positions with keys and values
  double rope_theta = 0;                  // the RoPE base the keys were rotated with
  std::vector<uint32_t> query_positions;  // ascending, each < num_tokens
  std::vector<KvLayer> layers;
};

// Positions [begin, end) of one layer's `rows` (its keys or values), in the layout an
// upload takes: fp16 bits [kv_head][token][head_dim].
std::vector<uint16_t> RowsOf(const KvDataSet& data, const std::vector<uint16_t>& rows,
                             uint32_t begin, uint32_t end);

// Position p's K and V on every layer, in the layout a decode-token append takes: fp16
// bits [layer][kv_head][head_dim] each.
void TokenKv(const KvDataSet& data, uint32_t position, std::vector<uint16_t>* keys,
             std::vector<uint16_t>* values);

}  // namespace pqkv::workload

#endif  // PQKV_WORKLOAD_KV_DATASET_H_

#include "workload/kv_dataset.h"

#include <algorithm>

namespace pqkv::workload {

const char* HeadTypeName(HeadType type) {
  switch (type) {
    case HeadType::kStreaming:
      return "streaming";
    case HeadType::kRetrieval:
      return "retrieval";
    case HeadType::kDiffuse:
      return "diffuse";
  }
  return "unknown";
}

std::vector<uint16_t> RowsOf(const KvDataSet& data, const std::vector<uint16_t>& rows,
                             uint32_t begin, uint32_t end) {
  const size_t d = data.head_dim;
  std::vector<uint16_t> out(static_cast<size_t>(data.num_kv_heads) * (end - begin) * d);
  for (uint32_t h = 0; h < data.num_kv_heads; ++h) {
    std::copy(rows.begin() + (static_cast<size_t>(h) * data.num_tokens + begin) * d,
              rows.begin() + (static_cast<size_t>(h) * data.num_tokens + end) * d,
              out.begin() + static_cast<size_t>(h) * (end - begin) * d);
  }
  return out;
}

void TokenKv(const KvDataSet& data, uint32_t position, std::vector<uint16_t>* keys,
             std::vector<uint16_t>* values) {
  keys->clear();
  values->clear();
  for (const KvLayer& layer : data.layers) {
    const std::vector<uint16_t> k = RowsOf(data, layer.keys, position, position + 1);
    const std::vector<uint16_t> v = RowsOf(data, layer.values, position, position + 1);
    keys->insert(keys->end(), k.begin(), k.end());
    values->insert(values->end(), v.begin(), v.end());
  }
}

}  // namespace pqkv::workload

#include "tests/testing/patterned_kv.h"

#include <cstring>

namespace pqkv::testing {

PatternedLayer MakePatternedLayer(const ModelShape& shape, size_t num_tokens, uint32_t seed) {
  const size_t bytes = shape.num_kv_heads * num_tokens * shape.row_bytes();
  PatternedLayer layer{std::vector<uint8_t>(bytes), std::vector<uint8_t>(bytes)};
  uint32_t state = seed * 2654435761u + 1;
  for (size_t i = 0; i < bytes; ++i) {
    state = state * 1664525u + 1013904223u;  // LCG: cheap, position-dependent bytes
    layer.keys[i] = static_cast<uint8_t>(state >> 24);
    layer.values[i] = static_cast<uint8_t>(state >> 16);
  }
  // Finite keys and values (the server refuses others): clear the top exponent bit of
  // every element's high byte.
  const size_t elem = DTypeBytes(shape.dtype);
  for (size_t i = elem - 1; i < bytes; i += elem) {
    layer.keys[i] &= 0x3f;
    layer.values[i] &= 0x3f;
  }
  return layer;
}

size_t CountMismatchedRows(const ModelShape& shape, size_t num_tokens, const PatternedLayer& layer,
                           const RetrieveResult& result, const uint8_t* keys_out,
                           const uint8_t* values_out) {
  const size_t row = shape.row_bytes();
  size_t mismatched = 0, out = 0;
  for (size_t h = 0; h < result.heads.size(); ++h) {
    const HeadSelection& head = result.heads[h];
    std::vector<uint32_t> sent_positions;
    if (head.slots.empty()) {
      sent_positions = head.positions;
    } else {
      for (uint32_t index : head.sent) sent_positions.push_back(head.positions[index]);
    }
    for (uint32_t p : sent_positions) {
      const size_t src = (h * num_tokens + p) * row;
      if (std::memcmp(keys_out + out * row, layer.keys.data() + src, row) != 0 ||
          std::memcmp(values_out + out * row, layer.values.data() + src, row) != 0) {
        ++mismatched;
      }
      ++out;
    }
  }
  return mismatched;
}

}  // namespace pqkv::testing

// Patterned K/V bytes for data-plane tests: every byte depends on its position, so a row
// that lands in the wrong place (or half-written) never compares equal. Keys and values
// are kept finite in every dtype.
#ifndef PQKV_TESTS_TESTING_PATTERNED_KV_H_
#define PQKV_TESTS_TESTING_PATTERNED_KV_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "client/pqkv_client.h"

namespace pqkv::testing {

struct PatternedLayer {
  std::vector<uint8_t> keys;    // [kv_head][token][head_dim] in the shape's dtype
  std::vector<uint8_t> values;  // same layout
};

PatternedLayer MakePatternedLayer(const ModelShape& shape, size_t num_tokens, uint32_t seed);

// Compares rows that landed with what was uploaded: `keys_out`/`values_out` hold, kv head
// by kv head, the rows of result.heads[h].positions (all of them, or with a row cache
// those in heads[h].sent). Returns the number of rows that differ.
size_t CountMismatchedRows(const ModelShape& shape, size_t num_tokens, const PatternedLayer& layer,
                           const RetrieveResult& result, const uint8_t* keys_out,
                           const uint8_t* values_out);

}  // namespace pqkv::testing

#endif  // PQKV_TESTS_TESTING_PATTERNED_KV_H_

#include "kernels/fast_scan.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu_features.h"
#include "kernels/simd_avx2.h"

namespace pqkv::kernels {

QuantizedTable QuantizeTable(const float* table, int subspaces, uint8_t* q) {
  QuantizedTable out;
  float widest = 0;
  for (int m = 0; m < subspaces; ++m) {
    const float* row = table + m * 16;
    const auto [lo, hi] = std::minmax_element(row, row + 16);
    widest = std::max(widest, *hi - *lo);
    out.offset += *lo;
  }
  out.scale = widest > 0 ? widest / 255.0f : 1.0f;
  for (int m = 0; m < subspaces; ++m) {
    const float* row = table + m * 16;
    const float lo = *std::min_element(row, row + 16);
    for (int c = 0; c < 16; ++c) {
      q[m * 16 + c] =
          static_cast<uint8_t>(std::min(255.0f, std::nearbyint((row[c] - lo) / out.scale)));
    }
  }
  return out;
}

void FastScanAccumulatePortable(const uint8_t* blocks, size_t num_blocks, int subspaces,
                                const uint8_t* tables, int num_tables, uint16_t* out,
                                size_t out_stride) {
  const size_t block_bytes = 16 * static_cast<size_t>(subspaces);
  for (size_t b = 0; b < num_blocks; ++b) {
    const uint8_t* block = blocks + b * block_bytes;
    for (int g = 0; g < num_tables; ++g) {
      const uint8_t* table = tables + static_cast<size_t>(g) * subspaces * 16;
      uint16_t* dst = out + g * out_stride + b * 32;
      for (int j = 0; j < 32; ++j) {
        uint32_t sum = 0;
        for (int p = 0; p < subspaces / 2; ++p) {
          const uint8_t byte = block[p * 32 + j];
          sum += table[(2 * p) * 16 + (byte & 0xf)] + table[(2 * p + 1) * 16 + (byte >> 4)];
        }
        dst[j] = static_cast<uint16_t>(sum);
      }
    }
  }
}

void FastScanAccumulate(const uint8_t* blocks, size_t num_blocks, int subspaces,
                        const uint8_t* tables, int num_tables, uint16_t* out, size_t out_stride) {
  if (UseAvx2()) {
    avx2::FastScanAccumulate(blocks, num_blocks, subspaces, tables, num_tables, out, out_stride);
  } else {
    FastScanAccumulatePortable(blocks, num_blocks, subspaces, tables, num_tables, out, out_stride);
  }
}

}  // namespace pqkv::kernels

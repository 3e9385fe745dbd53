// 4-bit fast scan: tables quantised to uint8, looked up 32 tokens at a time from the
// packed blocks of PqCodeStore, summed in uint16.
//
// Pure functions, thread-safe. AVX2 (vpshufb) where available, portable otherwise.
#ifndef PQKV_KERNELS_FAST_SCAN_H_
#define PQKV_KERNELS_FAST_SCAN_H_

#include <cstddef>
#include <cstdint>

namespace pqkv::kernels {

// One float table [M][16] quantised so that table[m][c] ~= bias_m + scale * q[m][c] with
// q in [0, 255]: logit(t) ~= offset + scale * sum_m q[m][code_tm].
struct QuantizedTable {
  float offset = 0;  // sum_m bias_m
  float scale = 0;
};

// Quantises table fp32 [M][16] into q uint8 [M][16].
QuantizedTable QuantizeTable(const float* table, int subspaces, uint8_t* q);

// For g in [0, num_tables): out[g * out_stride + t] = sum_m tables[g][m][code_tm] for
// every token t of the num_blocks blocks (32 tokens each; padding tokens included).
// tables: uint8 [num_tables][M][16]. M even, at most 256.
void FastScanAccumulate(const uint8_t* blocks, size_t num_blocks, int subspaces,
                        const uint8_t* tables, int num_tables, uint16_t* out, size_t out_stride);

// The portable version whatever the CPU; the AVX2 version's test oracle.
void FastScanAccumulatePortable(const uint8_t* blocks, size_t num_blocks, int subspaces,
                                const uint8_t* tables, int num_tables, uint16_t* out,
                                size_t out_stride);

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_FAST_SCAN_H_

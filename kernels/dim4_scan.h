// Per-dimension 4-bit scan: each key dimension is one PQ sub-space with 16 levels on a
// uniform grid (PqCodebook trains one-dimension sub-spaces that way), so a token's logit
// is an integer dot product of its 4-bit codes with an int8 query, plus an offset:
//   logit = offset + scale * sum_d code_d * weight_d.
// Read with AVX-512 VNNI (vpdpbusd: 64 code x weight products per instruction) or AVX2
// (vpmaddubsw), no table lookups and no key rows; docs/benchmarks.md measures it.
//
// Layout (PqCodeStore's dim4 blocks): blocks of 16 tokens; block = head_dim / 8 groups of
// 64 bytes; in group j, byte 4t + b holds token t's code of dimension 8j + b in its low
// nibble and of dimension 8j + 4 + b in its high nibble (b in [0, 4)), so one 64-byte load
// gives 16 tokens x 4 dimensions per nibble, the operand order of vpdpbusd.
//
// Pure functions, thread-safe.
#ifndef PQKV_KERNELS_DIM4_SCAN_H_
#define PQKV_KERNELS_DIM4_SCAN_H_

#include <cstddef>
#include <cstdint>

namespace pqkv::kernels {

inline constexpr size_t kDim4BlockTokens = 16;

// Bytes of one block of 16 tokens: 8 x head_dim (head_dim % 8 == 0).
inline size_t Dim4BlockBytes(int head_dim) { return kDim4BlockTokens * head_dim / 2; }

// Writes the codes of tokens [first, first + n) (uint8 [n][head_dim], each below 16) into
// `blocks`, which holds at least the blocks those tokens fall in; token first + i goes to
// block (first + i) / 16. Other tokens' nibbles are kept.
void PackDim4(const uint8_t* codes, size_t first, size_t n, int head_dim, uint8_t* blocks);

// The inverse of PackDim4: the codes of tokens [first, first + n), uint8 [n][head_dim].
void UnpackDim4(const uint8_t* blocks, size_t first, size_t n, int head_dim, uint8_t* codes);

// The int8 query of a per-dimension grid whose levels are lo_d + step_d x c for c in [0, 16)
// (levels fp32 [head_dim][16], the codebook's centroids): weights_d = round(q_d step_d /
// scale), |weights_d| <= 127, and offset = sum_d q_d lo_d, so that q . level(code) ~=
// offset + scale x sum_d code_d weights_d. scale is 0 (weights 0) for a query orthogonal
// to every step.
struct Dim4Query {
  float offset = 0;
  float scale = 0;
};
Dim4Query QuantizeDim4Query(const float* query, const float* levels, int head_dim, int8_t* weights);

// out[g * out_stride + t] = sum_d code_td x weights[g][d] (int32) for every token t of the
// num_blocks blocks (padding tokens included), for g in [0, num_queries).
// weights: int8 [num_queries][head_dim]; head_dim % 8 == 0.
void Dim4Dots(const uint8_t* blocks, size_t num_blocks, int head_dim, const int8_t* weights,
              int num_queries, int32_t* out, size_t out_stride);

// The portable version whatever the CPU; the SIMD versions' test oracle.
void Dim4DotsPortable(const uint8_t* blocks, size_t num_blocks, int head_dim, const int8_t* weights,
                      int num_queries, int32_t* out, size_t out_stride);

// sum_d codes[d] x weights[d] for one token's codes (uint8 [head_dim]): the same integer
// Dim4Dots gives that token.
int32_t Dim4Dot(const uint8_t* codes, const int8_t* weights, int head_dim);

// Which Dim4Dots runs: "avx512-vnni", "avx2" or "portable".
const char* Dim4KernelName();

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_DIM4_SCAN_H_

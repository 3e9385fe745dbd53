#include "kernels/dim4_scan.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu_features.h"
#include "kernels/simd_avx2.h"
#include "kernels/simd_avx512_vnni.h"

namespace pqkv::kernels {

void PackDim4(const uint8_t* codes, size_t first, size_t n, int head_dim, uint8_t* blocks) {
  const size_t block_bytes = Dim4BlockBytes(head_dim);
  for (size_t i = 0; i < n; ++i) {
    const size_t t = first + i;
    uint8_t* block = blocks + t / kDim4BlockTokens * block_bytes;
    const size_t slot = 4 * (t % kDim4BlockTokens);
    const uint8_t* code = codes + i * head_dim;
    for (int j = 0; j < head_dim / 8; ++j) {
      uint8_t* group = block + static_cast<size_t>(j) * 64 + slot;
      for (int b = 0; b < 4; ++b) {
        group[b] = static_cast<uint8_t>((code[8 * j + b] & 15) | (code[8 * j + 4 + b] << 4));
      }
    }
  }
}

void UnpackDim4(const uint8_t* blocks, size_t first, size_t n, int head_dim, uint8_t* codes) {
  const size_t block_bytes = Dim4BlockBytes(head_dim);
  for (size_t i = 0; i < n; ++i) {
    const size_t t = first + i;
    const uint8_t* block = blocks + t / kDim4BlockTokens * block_bytes;
    const size_t slot = 4 * (t % kDim4BlockTokens);
    uint8_t* code = codes + i * head_dim;
    for (int j = 0; j < head_dim / 8; ++j) {
      const uint8_t* group = block + static_cast<size_t>(j) * 64 + slot;
      for (int b = 0; b < 4; ++b) {
        code[8 * j + b] = group[b] & 15;
        code[8 * j + 4 + b] = group[b] >> 4;
      }
    }
  }
}

Dim4Query QuantizeDim4Query(const float* query, const float* levels, int head_dim,
                            int8_t* weights) {
  Dim4Query out;
  double offset = 0;
  float largest = 0;
  for (int d = 0; d < head_dim; ++d) {
    const float* l = levels + static_cast<size_t>(d) * 16;
    offset += static_cast<double>(query[d]) * l[0];
    largest = std::max(largest, std::fabs(query[d] * ((l[15] - l[0]) / 15)));
  }
  out.offset = static_cast<float>(offset);
  out.scale = largest / 127;
  for (int d = 0; d < head_dim; ++d) {
    const float* l = levels + static_cast<size_t>(d) * 16;
    const float w = out.scale > 0 ? query[d] * ((l[15] - l[0]) / 15) / out.scale : 0.0f;
    // Rounded half away from zero, inline (lround is a library call per dimension).
    const float rounded = std::clamp(w + (w >= 0 ? 0.5f : -0.5f), -127.0f, 127.0f);
    weights[d] = static_cast<int8_t>(rounded);
  }
  return out;
}

int32_t Dim4Dot(const uint8_t* codes, const int8_t* weights, int head_dim) {
  int32_t sum = 0;
  for (int d = 0; d < head_dim; ++d) sum += int32_t{codes[d]} * weights[d];
  return sum;
}

void Dim4DotsPortable(const uint8_t* blocks, size_t num_blocks, int head_dim, const int8_t* weights,
                      int num_queries, int32_t* out, size_t out_stride) {
  const size_t block_bytes = Dim4BlockBytes(head_dim);
  for (size_t blk = 0; blk < num_blocks; ++blk) {
    const uint8_t* block = blocks + blk * block_bytes;
    for (int g = 0; g < num_queries; ++g) {
      const int8_t* w = weights + static_cast<size_t>(g) * head_dim;
      int32_t* dst = out + static_cast<size_t>(g) * out_stride + blk * kDim4BlockTokens;
      for (size_t t = 0; t < kDim4BlockTokens; ++t) {
        int32_t sum = 0;
        for (int j = 0; j < head_dim / 8; ++j) {
          const uint8_t* group = block + static_cast<size_t>(j) * 64 + 4 * t;
          for (int b = 0; b < 4; ++b) {
            sum +=
                int32_t{group[b] & 15} * w[8 * j + b] + int32_t{group[b] >> 4} * w[8 * j + 4 + b];
          }
        }
        dst[t] = sum;
      }
    }
  }
}

void Dim4Dots(const uint8_t* blocks, size_t num_blocks, int head_dim, const int8_t* weights,
              int num_queries, int32_t* out, size_t out_stride) {
  if (UseAvx512Vnni()) {
    return avx512_vnni::Dim4Dots(blocks, num_blocks, head_dim, weights, num_queries, out,
                                 out_stride);
  }
  if (UseAvx2()) {
    return avx2::Dim4Dots(blocks, num_blocks, head_dim, weights, num_queries, out, out_stride);
  }
  Dim4DotsPortable(blocks, num_blocks, head_dim, weights, num_queries, out, out_stride);
}

const char* Dim4KernelName() {
  return UseAvx512Vnni() ? "avx512-vnni" : UseAvx2() ? "avx2" : "portable";
}

}  // namespace pqkv::kernels

// Gather of the selected K/V rows into one contiguous buffer, typically pinned host
// memory: the kernel's stores go straight over PCIe/NVLink-C2C, no staging copy.
// Memory-bound; each thread copies one chunk of 16, 8, 4 or 1 bytes per step.
#include <cstdint>

#include "kernels/cuda/retrieval_launchers.h"

namespace pqkv::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr uint64_t kMaxBlocks = 8192;

// Chunk i of the output is chunk c = i % chunks_per_row of output row r = i / chunks_per_row;
// rows [0, H*k) are K rows, [H*k, 2*H*k) V rows, and output row h*k + j holds source
// row positions[h*k + j] of head h.
template <typename Chunk>
__global__ void __launch_bounds__(kThreads)
    GatherRowsKernel(const Chunk* __restrict__ keys, const Chunk* __restrict__ values,
                     uint32_t num_tokens, uint64_t chunks_per_row,
                     const uint32_t* __restrict__ positions, uint32_t k, uint64_t rows_per_tensor,
                     Chunk* __restrict__ out) {
  const uint64_t total = 2 * rows_per_tensor * chunks_per_row;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const uint64_t row = i / chunks_per_row;
    const uint64_t chunk = i - row * chunks_per_row;
    const bool is_value = row >= rows_per_tensor;
    const uint64_t selected = is_value ? row - rows_per_tensor : row;
    const uint64_t h = selected / k;
    const uint64_t source_row = h * num_tokens + positions[selected];
    out[i] = (is_value ? values : keys)[source_row * chunks_per_row + chunk];
  }
}

template <typename Chunk>
cudaError_t Launch(const void* keys, const void* values, uint32_t num_tokens, size_t row_bytes,
                   const uint32_t* positions, uint32_t k, uint64_t rows_per_tensor, void* out,
                   cudaStream_t stream) {
  const uint64_t chunks_per_row = row_bytes / sizeof(Chunk);
  const uint64_t total = 2 * rows_per_tensor * chunks_per_row;
  uint64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (blocks < 1) blocks = 1;
  GatherRowsKernel<Chunk><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const Chunk*>(keys), static_cast<const Chunk*>(values), num_tokens,
      chunks_per_row, positions, k, rows_per_tensor, static_cast<Chunk*>(out));
  return cudaGetLastError();
}

bool Aligned(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

}  // namespace

cudaError_t LaunchGatherRows(const void* keys, const void* values, int kv_heads,
                             uint32_t num_tokens, size_t row_bytes, const uint32_t* positions,
                             uint32_t k, void* out, cudaStream_t stream) {
  const uint64_t rows_per_tensor = static_cast<uint64_t>(kv_heads) * k;
  if (rows_per_tensor == 0 || row_bytes == 0) return cudaSuccess;
  const auto fits = [&](size_t width) {
    return row_bytes % width == 0 && Aligned(keys, width) && Aligned(values, width) &&
           Aligned(out, width);
  };
  if (fits(16)) {
    return Launch<uint4>(keys, values, num_tokens, row_bytes, positions, k, rows_per_tensor, out,
                         stream);
  }
  if (fits(8)) {
    return Launch<uint2>(keys, values, num_tokens, row_bytes, positions, k, rows_per_tensor, out,
                         stream);
  }
  if (fits(4)) {
    return Launch<uint32_t>(keys, values, num_tokens, row_bytes, positions, k, rows_per_tensor, out,
                            stream);
  }
  return Launch<uint8_t>(keys, values, num_tokens, row_bytes, positions, k, rows_per_tensor, out,
                         stream);
}

}  // namespace pqkv::kernels::cuda

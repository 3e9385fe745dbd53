// Step 4 of the layer retrieval: per-head top-k with kernels::TopK's exact tie rule.
//
// Every candidate (head h, position p) gets a 64-bit key: h in the high word, the
// bitwise complement of the score's order-preserving key in the low word. An ascending
// radix sort of those keys groups the heads in order and puts each head's best score
// first; CUB's radix sort is stable and the candidates enter in position order, so equal
// scores stay ordered by lower position. Only the bits that can differ are sorted
// (32 + ceil(log2(heads))). The first k entries of each head's run are the answer.
//
// A full sort is more work than a radix select, but for k up to n/5 the select's extra
// passes (threshold, compaction, then sorting the k winners) win little, and CUB's sort
// is well tested: correctness and the tie rule come first here.
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/device_reduce.cuh"
#include "kernels/cuda/retrieval_launchers.h"

namespace pqkv::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 4096;
constexpr size_t kAlignment = 256;

size_t AlignUp(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

int KeyBits(int heads) {
  int head_bits = 0;
  while ((1ll << head_bits) < heads) ++head_bits;
  return 32 + head_bits;
}

int Blocks(uint64_t items) {
  const uint64_t blocks = (items + kThreads - 1) / kThreads;
  return blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : static_cast<int>(blocks));
}

// The scratch buffer: keys and values in and out of the sort, then CUB's own storage.
struct Scratch {
  uint64_t* keys_in;
  uint64_t* keys_out;
  uint32_t* values_in;
  uint32_t* values_out;
  void* cub_storage;
  size_t cub_bytes;
};

Scratch Carve(void* base, size_t items, size_t cub_bytes) {
  char* p = static_cast<char*>(base);
  Scratch s;
  s.keys_in = reinterpret_cast<uint64_t*>(p);
  p += AlignUp(items * sizeof(uint64_t));
  s.keys_out = reinterpret_cast<uint64_t*>(p);
  p += AlignUp(items * sizeof(uint64_t));
  s.values_in = reinterpret_cast<uint32_t*>(p);
  p += AlignUp(items * sizeof(uint32_t));
  s.values_out = reinterpret_cast<uint32_t*>(p);
  p += AlignUp(items * sizeof(uint32_t));
  s.cub_storage = p;
  s.cub_bytes = cub_bytes;
  return s;
}

size_t CarvedBytes(size_t items) {
  return 2 * AlignUp(items * sizeof(uint64_t)) + 2 * AlignUp(items * sizeof(uint32_t));
}

cudaError_t CubSortBytes(int items, int key_bits, size_t* bytes) {
  *bytes = 0;
  return cub::DeviceRadixSort::SortPairs(
      nullptr, *bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr), items, 0, key_bits);
}

// Item i is candidate (h, begin + j) with h = i / candidates, j = i % candidates.
__global__ void __launch_bounds__(kThreads)
    BuildKeysKernel(const float* __restrict__ scores, uint32_t num_tokens, uint32_t begin,
                    uint32_t candidates, uint32_t items, uint64_t* __restrict__ keys,
                    uint32_t* __restrict__ values) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
    const uint32_t h = i / candidates;
    const uint32_t p = begin + (i - h * candidates);
    const uint32_t best_first = ~OrderedKey(scores[static_cast<size_t>(h) * num_tokens + p]);
    keys[i] = (static_cast<uint64_t>(h) << 32) | best_first;
    values[i] = p;
  }
}

// Item i is rank j = i % k of head h = i / k.
__global__ void __launch_bounds__(kThreads)
    TakeTopKernel(const uint32_t* __restrict__ sorted_positions, const float* __restrict__ scores,
                  uint32_t num_tokens, uint32_t candidates, uint32_t k, uint32_t items,
                  uint32_t* __restrict__ positions, float* __restrict__ top_scores) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
    const uint32_t h = i / k;
    const uint32_t p = sorted_positions[static_cast<size_t>(h) * candidates + (i - h * k)];
    positions[i] = p;
    top_scores[i] = scores[static_cast<size_t>(h) * num_tokens + p];
  }
}

}  // namespace

cudaError_t TopKScratchBytes(int heads, uint32_t candidates, size_t* bytes) {
  const size_t items = static_cast<size_t>(heads) * candidates;
  size_t cub_bytes = 0;
  const cudaError_t status = CubSortBytes(static_cast<int>(items), KeyBits(heads), &cub_bytes);
  *bytes = CarvedBytes(items) + AlignUp(cub_bytes);
  return status;
}

cudaError_t LaunchTopK(const float* scores, int heads, uint32_t num_tokens, uint32_t begin,
                       uint32_t end, uint32_t k, void* scratch, size_t scratch_bytes,
                       uint32_t* positions, float* top_scores, cudaStream_t stream) {
  const uint32_t candidates = end - begin;
  const uint32_t items = static_cast<uint32_t>(heads) * candidates;
  const int key_bits = KeyBits(heads);
  size_t cub_bytes = 0;
  cudaError_t status = CubSortBytes(static_cast<int>(items), key_bits, &cub_bytes);
  if (status != cudaSuccess) return status;
  if (scratch_bytes < CarvedBytes(items) + cub_bytes) return cudaErrorInvalidValue;
  const Scratch s = Carve(scratch, items, scratch_bytes - CarvedBytes(items));

  BuildKeysKernel<<<Blocks(items), kThreads, 0, stream>>>(scores, num_tokens, begin, candidates,
                                                          items, s.keys_in, s.values_in);
  status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  size_t storage_bytes = s.cub_bytes;
  status = cub::DeviceRadixSort::SortPairs(s.cub_storage, storage_bytes, s.keys_in, s.keys_out,
                                           s.values_in, s.values_out, static_cast<int>(items), 0,
                                           key_bits, stream);
  if (status != cudaSuccess) return status;
  const uint32_t top_items = static_cast<uint32_t>(heads) * k;
  TakeTopKernel<<<Blocks(top_items), kThreads, 0, stream>>>(
      s.values_out, scores, num_tokens, candidates, k, top_items, positions, top_scores);
  return cudaGetLastError();
}

}  // namespace pqkv::kernels::cuda

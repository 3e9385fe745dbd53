// Step 4 of the layer retrieval: per-head top-k with kernels::TopK's exact tie rule.
//
// Every selected (head h, position p) gets a 64-bit key: h in the high word, the bitwise
// complement of the score's order-preserving key in the low word. An ascending stable
// radix sort (CUB) of those keys, entered in position order, groups the heads in order,
// puts each head's best score first and keeps equal scores ordered by lower position.
// Only the bits that can differ are sorted (32 + ceil(log2(heads))).
//
// Two ways to the sorted top k, chosen per call:
//  - k * 4 <= candidates (the decode case: 4096 of ~130K; and heads <= 65535): a radix
//    select first. Four histogram passes of 8 bits over each head's order-preserving
//    score keys find the k-th largest key T and how many of the keys equal to T to take
//    (the k-th can be a tie); then every key > T and the first keys == T by position are
//    compacted (two prefix sums over the candidates), and only those H * k winners are
//    sorted, as the CPU's kernels/radix_select does. Per candidate: 7 reads of its score
//    and two 4-byte prefix sums, where the full sort builds and sorts a 12-byte
//    (key, position) pair per candidate over several passes.
//  - otherwise (k a large part of the candidates) the whole candidate set is sorted and
//    the first k of each head taken.
#include <algorithm>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

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

// ---- Radix select (k * 4 <= candidates) ----

constexpr int kBins = 256;
constexpr int kHistogramThreads = 256;
constexpr int kMaxHistogramBlocksPerHead = 256;

// The histogram grid has one row of blocks per head: at most 65535 heads.
bool UseSelect(int heads, uint32_t candidates, uint32_t k) {
  return uint64_t{k} * 4 <= candidates && heads <= 65535;
}

// The select path's scratch, after the sort's (CarvedBytes of the H * k winners).
struct SelectScratch {
  uint32_t* histogram;  // [heads][256]
  uint32_t* prefix;     // [heads]: the key bits found so far, then T
  uint32_t* remaining;  // [heads]: winners still to find among keys matching prefix
  uint32_t* flags;      // [items]
  uint32_t* ranks;      // [items]
  void* cub_storage;
  size_t cub_bytes;
};

size_t SelectCarvedBytes(int heads, size_t items) {
  return AlignUp(static_cast<size_t>(heads) * kBins * sizeof(uint32_t)) +
         2 * AlignUp(heads * sizeof(uint32_t)) + 2 * AlignUp(items * sizeof(uint32_t));
}

cudaError_t CubScanBytes(int items, size_t* bytes) {
  *bytes = 0;
  return cub::DeviceScan::ExclusiveSum(nullptr, *bytes, static_cast<const uint32_t*>(nullptr),
                                       static_cast<uint32_t*>(nullptr), items);
}

// Scratch bytes of the select path for `winners` = heads * k selected of `items`.
cudaError_t SelectBytes(int heads, size_t items, size_t winners, size_t* bytes) {
  size_t sort_bytes = 0, scan_bytes = 0;
  cudaError_t status = CubSortBytes(static_cast<int>(winners), KeyBits(heads), &sort_bytes);
  if (status != cudaSuccess) return status;
  status = CubScanBytes(static_cast<int>(items), &scan_bytes);
  *bytes = CarvedBytes(winners) + SelectCarvedBytes(heads, items) +
           AlignUp(std::max(sort_bytes, scan_bytes));
  return status;
}

// Grid (blocks, heads); block b of head h counts, over h's candidates whose key matches
// prefix[h] on the bits of `high_mask`, the 8 key bits at `shift`.
__global__ void __launch_bounds__(kHistogramThreads)
    HistogramKernel(const float* __restrict__ scores, uint32_t num_tokens, uint32_t begin,
                    uint32_t candidates, int shift, uint32_t high_mask,
                    const uint32_t* __restrict__ prefix, uint32_t* __restrict__ histogram) {
  __shared__ uint32_t bins[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) bins[b] = 0;
  __syncthreads();
  const uint32_t h = blockIdx.y;
  const uint32_t want = prefix[h] & high_mask;
  const float* row = scores + static_cast<size_t>(h) * num_tokens + begin;
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t j = blockIdx.x * blockDim.x + threadIdx.x; j < candidates; j += stride) {
    const uint32_t key = OrderedKey(row[j]);
    if ((key & high_mask) == want) atomicAdd(&bins[(key >> shift) & (kBins - 1)], 1u);
  }
  __syncthreads();
  uint32_t* out = histogram + static_cast<size_t>(h) * kBins;
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
    if (bins[b] != 0) atomicAdd(&out[b], bins[b]);
  }
}

__global__ void InitSelectKernel(int heads, uint32_t k, uint32_t* __restrict__ prefix,
                                 uint32_t* __restrict__ remaining) {
  const int h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h < heads) {
    prefix[h] = 0;
    remaining[h] = k;
  }
}

// One thread per head: the bin, from the top, that holds the remaining[h]-th largest key
// among those matching the prefix; its bits join the prefix, the keys in higher bins
// are winners and leave `remaining`.
__global__ void SelectBinKernel(const uint32_t* __restrict__ histogram, int heads, int shift,
                                uint32_t* __restrict__ prefix, uint32_t* __restrict__ remaining) {
  const int h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h >= heads) return;
  const uint32_t* bins = histogram + static_cast<size_t>(h) * kBins;
  const uint32_t want = remaining[h];
  uint32_t above = 0;
  for (int b = kBins - 1; b >= 0; --b) {
    if (above + bins[b] >= want || b == 0) {
      prefix[h] |= static_cast<uint32_t>(b) << shift;
      remaining[h] = want - above;
      return;
    }
    above += bins[b];
  }
}

// flags[i] = 1 where candidate i's key equals its head's T (prefix after four passes).
__global__ void __launch_bounds__(kThreads)
    EqualFlagsKernel(const float* __restrict__ scores, uint32_t num_tokens, uint32_t begin,
                     uint32_t candidates, uint32_t items, const uint32_t* __restrict__ threshold,
                     uint32_t* __restrict__ flags) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
    const uint32_t h = i / candidates;
    const uint32_t p = begin + (i - h * candidates);
    flags[i] = OrderedKey(scores[static_cast<size_t>(h) * num_tokens + p]) == threshold[h];
  }
}

// flags[i] = 1 for the winners: key > T, or key == T and among the first remaining[h]
// such keys of the head by position (ranks: exclusive prefix sum of the equal flags).
__global__ void __launch_bounds__(kThreads)
    WinnerFlagsKernel(const float* __restrict__ scores, uint32_t num_tokens, uint32_t begin,
                      uint32_t candidates, uint32_t items, const uint32_t* __restrict__ threshold,
                      const uint32_t* __restrict__ remaining, const uint32_t* __restrict__ ranks,
                      uint32_t* __restrict__ flags) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
    const uint32_t h = i / candidates;
    const uint32_t p = begin + (i - h * candidates);
    const uint32_t key = OrderedKey(scores[static_cast<size_t>(h) * num_tokens + p]);
    const uint32_t t = threshold[h];
    const uint32_t equal_rank = ranks[i] - ranks[static_cast<size_t>(h) * candidates];
    flags[i] = key > t || (key == t && flags[i] != 0 && equal_rank < remaining[h]);
  }
}

// Winner i goes to slot slots[i] (exclusive prefix sum of the winner flags: exactly k per
// head, so head h's winners fill [h*k, (h+1)*k) in position order).
__global__ void __launch_bounds__(kThreads)
    ScatterWinnersKernel(const float* __restrict__ scores, uint32_t num_tokens, uint32_t begin,
                         uint32_t candidates, uint32_t items, const uint32_t* __restrict__ flags,
                         const uint32_t* __restrict__ slots, uint64_t* __restrict__ keys,
                         uint32_t* __restrict__ values) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
    if (flags[i] == 0) continue;
    const uint32_t h = i / candidates;
    const uint32_t p = begin + (i - h * candidates);
    const uint32_t best_first = ~OrderedKey(scores[static_cast<size_t>(h) * num_tokens + p]);
    const uint32_t slot = slots[i];
    keys[slot] = (static_cast<uint64_t>(h) << 32) | best_first;
    values[slot] = p;
  }
}

cudaError_t LaunchSelect(const float* scores, int heads, uint32_t num_tokens, uint32_t begin,
                         uint32_t candidates, uint32_t k, void* scratch, size_t scratch_bytes,
                         uint32_t* positions, float* top_scores, cudaStream_t stream) {
  const uint32_t items = static_cast<uint32_t>(heads) * candidates;
  const uint32_t winners = static_cast<uint32_t>(heads) * k;
  size_t needed = 0;
  cudaError_t status = SelectBytes(heads, items, winners, &needed);
  if (status != cudaSuccess) return status;
  if (scratch_bytes < needed) return cudaErrorInvalidValue;
  // Carve: the sort's keys and values for the winners, then the select's arrays, then
  // CUB's storage (shared by the scans and the sort, which run one after another).
  char* p = static_cast<char*>(scratch);
  const Scratch sort = Carve(p, winners, 0);
  p += CarvedBytes(winners);
  SelectScratch sel;
  sel.histogram = reinterpret_cast<uint32_t*>(p);
  p += AlignUp(static_cast<size_t>(heads) * kBins * sizeof(uint32_t));
  sel.prefix = reinterpret_cast<uint32_t*>(p);
  p += AlignUp(heads * sizeof(uint32_t));
  sel.remaining = reinterpret_cast<uint32_t*>(p);
  p += AlignUp(heads * sizeof(uint32_t));
  sel.flags = reinterpret_cast<uint32_t*>(p);
  p += AlignUp(static_cast<size_t>(items) * sizeof(uint32_t));
  sel.ranks = reinterpret_cast<uint32_t*>(p);
  p += AlignUp(static_cast<size_t>(items) * sizeof(uint32_t));
  sel.cub_storage = p;
  sel.cub_bytes = scratch_bytes - (p - static_cast<char*>(scratch));

  const int head_blocks = (heads + kThreads - 1) / kThreads;
  InitSelectKernel<<<head_blocks, kThreads, 0, stream>>>(heads, k, sel.prefix, sel.remaining);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  uint32_t per_head = (candidates + kHistogramThreads - 1) / kHistogramThreads;
  per_head = std::max<uint32_t>(1, std::min<uint32_t>(per_head, kMaxHistogramBlocksPerHead));
  const dim3 histogram_grid(per_head, heads);
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    const uint32_t high_mask = pass == 0 ? 0u : ~((1u << (shift + 8)) - 1u);
    status = cudaMemsetAsync(sel.histogram, 0,
                             static_cast<size_t>(heads) * kBins * sizeof(uint32_t), stream);
    if (status != cudaSuccess) return status;
    HistogramKernel<<<histogram_grid, kHistogramThreads, 0, stream>>>(
        scores, num_tokens, begin, candidates, shift, high_mask, sel.prefix, sel.histogram);
    if ((status = cudaGetLastError()) != cudaSuccess) return status;
    SelectBinKernel<<<head_blocks, kThreads, 0, stream>>>(sel.histogram, heads, shift, sel.prefix,
                                                          sel.remaining);
    if ((status = cudaGetLastError()) != cudaSuccess) return status;
  }
  EqualFlagsKernel<<<Blocks(items), kThreads, 0, stream>>>(scores, num_tokens, begin, candidates,
                                                           items, sel.prefix, sel.flags);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  size_t cub_bytes = sel.cub_bytes;
  status = cub::DeviceScan::ExclusiveSum(sel.cub_storage, cub_bytes, sel.flags, sel.ranks,
                                         static_cast<int>(items), stream);
  if (status != cudaSuccess) return status;
  WinnerFlagsKernel<<<Blocks(items), kThreads, 0, stream>>>(scores, num_tokens, begin, candidates,
                                                            items, sel.prefix, sel.remaining,
                                                            sel.ranks, sel.flags);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  cub_bytes = sel.cub_bytes;
  status = cub::DeviceScan::ExclusiveSum(sel.cub_storage, cub_bytes, sel.flags, sel.ranks,
                                         static_cast<int>(items), stream);
  if (status != cudaSuccess) return status;
  ScatterWinnersKernel<<<Blocks(items), kThreads, 0, stream>>>(
      scores, num_tokens, begin, candidates, items, sel.flags, sel.ranks, sort.keys_in,
      sort.values_in);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  cub_bytes = sel.cub_bytes;
  status = cub::DeviceRadixSort::SortPairs(sel.cub_storage, cub_bytes, sort.keys_in, sort.keys_out,
                                           sort.values_in, sort.values_out,
                                           static_cast<int>(winners), 0, KeyBits(heads), stream);
  if (status != cudaSuccess) return status;
  TakeTopKernel<<<Blocks(winners), kThreads, 0, stream>>>(sort.values_out, scores, num_tokens, k, k,
                                                          winners, positions, top_scores);
  return cudaGetLastError();
}

}  // namespace

cudaError_t TopKScratchBytes(int heads, uint32_t candidates, size_t* bytes) {
  const size_t items = static_cast<size_t>(heads) * candidates;
  size_t cub_bytes = 0;
  const cudaError_t status = CubSortBytes(static_cast<int>(items), KeyBits(heads), &cub_bytes);
  *bytes = CarvedBytes(items) + AlignUp(cub_bytes);
  if (status != cudaSuccess) return status;
  // The select path, at its largest k (candidates / 4).
  size_t select_bytes = 0;
  const cudaError_t select_status =
      SelectBytes(heads, items, static_cast<size_t>(heads) * (candidates / 4), &select_bytes);
  *bytes = std::max(*bytes, select_bytes);
  return select_status;
}

cudaError_t LaunchTopK(const float* scores, int heads, uint32_t num_tokens, uint32_t begin,
                       uint32_t end, uint32_t k, void* scratch, size_t scratch_bytes,
                       uint32_t* positions, float* top_scores, cudaStream_t stream) {
  const uint32_t candidates = end - begin;
  if (UseSelect(heads, candidates, k)) {
    return LaunchSelect(scores, heads, num_tokens, begin, candidates, k, scratch, scratch_bytes,
                        positions, top_scores, stream);
  }
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

// Steps 2 and 3 of the layer retrieval: the ADC scan of every query head over its kv
// head's codes, the softmax normaliser of each query head over all tokens, and the GQA
// score of each kv head (the sum of its query heads' softmax probabilities).
//
// Three launches: the scan writes the logits and one (max, sum) normaliser per token
// block (an online softmax), a second kernel merges the blocks' normalisers per query
// head, a third turns logits into probabilities and sums each group.
#include <math_constants.h>

#include "kernels/cuda/device_reduce.cuh"
#include "kernels/cuda/retrieval_launchers.h"

namespace pqkv::kernels::cuda {
namespace {

constexpr int kScanThreads = 256;
constexpr int kTokensPerThread = 4;
constexpr int kMaxScanBlocks = 2048;
// Tables up to 47 KiB (M * ksub <= 12032 floats) are staged in shared memory, larger
// ones are read through the L1 cache. Dynamic plus static shared memory (the block
// reduction's 256 bytes) must stay within the 48 KiB a launch gets without opting in.
constexpr int kMaxSharedTableFloats = (48 - 1) * 1024 / 4;
constexpr int kNormalizerThreads = 256;
constexpr int kScoreThreads = 256;
constexpr int kMaxScoreBlocks = 4096;

// Grid (token block, query head). Each thread scans tokens t = its index + j * (grid
// stride), keeping its own online normaliser; the block's normaliser goes to
// partial_{max,sum}[q][blockIdx.x].
template <bool kSharedTable>
__global__ void __launch_bounds__(kScanThreads)
    AdcScanKernel(const float* __restrict__ tables, const uint8_t* __restrict__ codes, int group,
                  int subspaces, int ksub, uint32_t num_tokens, uint32_t code_stride, float scale,
                  float* __restrict__ logits, float* __restrict__ partial_max,
                  float* __restrict__ partial_sum) {
  extern __shared__ float shared_table[];
  const int q = blockIdx.y;
  const int h = q / group;
  const int table_size = subspaces * ksub;
  const float* table = tables + static_cast<size_t>(q) * table_size;
  if (kSharedTable) {
    for (int i = threadIdx.x; i < table_size; i += blockDim.x) shared_table[i] = table[i];
    __syncthreads();
    table = shared_table;
  }
  const uint8_t* head_codes = codes + static_cast<size_t>(h) * code_stride * subspaces;
  float* out = logits + static_cast<size_t>(q) * num_tokens;
  const unsigned mask = static_cast<unsigned>(ksub - 1);
  float run_max = -CUDART_INF_F;
  float run_sum = 0.0f;
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < num_tokens; t += stride) {
    const uint8_t* code = head_codes + static_cast<size_t>(t) * subspaces;
    float logit = 0.0f;
    for (int m = 0; m < subspaces; ++m) logit += table[m * ksub + (code[m] & mask)];
    out[t] = logit;
    // The reference's exponent: scale * logit rounded, then minus the max.
    CombineMaxSum(run_max, run_sum, __fmul_rn(scale, logit), 1.0f);
  }
  BlockReduceMaxSum(run_max, run_sum);
  if (threadIdx.x == 0) {
    const size_t slot = static_cast<size_t>(q) * gridDim.x + blockIdx.x;
    partial_max[slot] = run_max;
    partial_sum[slot] = run_sum;
  }
}

// One block per query head.
__global__ void __launch_bounds__(kNormalizerThreads)
    SoftmaxNormalizersKernel(const float* __restrict__ partial_max,
                             const float* __restrict__ partial_sum, int blocks,
                             float* __restrict__ max_out, float* __restrict__ inv_sum_out) {
  const size_t row = static_cast<size_t>(blockIdx.x) * blocks;
  float max = -CUDART_INF_F;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) max = fmaxf(max, partial_max[row + b]);
  max = BlockAllReduce(max, MaxOp(), -CUDART_INF_F);
  double sum = 0.0;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) {
    const float block_max = partial_max[row + b];
    if (block_max != -CUDART_INF_F) {
      sum += static_cast<double>(partial_sum[row + b]) *
             exp(static_cast<double>(block_max) - static_cast<double>(max));
    }
  }
  sum = BlockAllReduce(sum, SumOp(), 0.0);
  if (threadIdx.x == 0) {
    max_out[blockIdx.x] = max;
    inv_sum_out[blockIdx.x] = static_cast<float>(1.0 / sum);
  }
}

// Grid (token block, kv head); grid-stride over tokens.
__global__ void __launch_bounds__(kScoreThreads)
    GqaScoresKernel(const float* __restrict__ logits, const float* __restrict__ max,
                    const float* __restrict__ inv_sum, int group, uint32_t num_tokens, float scale,
                    float* __restrict__ scores) {
  const int h = blockIdx.y;
  float* out = scores + static_cast<size_t>(h) * num_tokens;
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < num_tokens; t += stride) {
    float score = 0.0f;
    for (int g = 0; g < group; ++g) {
      const int q = h * group + g;
      const float y = __fmul_rn(scale, logits[static_cast<size_t>(q) * num_tokens + t]);
      score = __fadd_rn(score, __fmul_rn(expf(y - max[q]), inv_sum[q]));
    }
    out[t] = score;
  }
}

int CeilDiv(uint32_t a, uint32_t b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace

int ScanBlocks(uint32_t num_tokens) {
  const int blocks = CeilDiv(num_tokens, kScanThreads * kTokensPerThread);
  return blocks < 1 ? 1 : (blocks > kMaxScanBlocks ? kMaxScanBlocks : blocks);
}

cudaError_t LaunchAdcScan(const float* tables, const uint8_t* codes, int kv_heads, int group,
                          int subspaces, int ksub, uint32_t num_tokens, uint32_t code_stride,
                          float scale, float* logits, float* partial_max, float* partial_sum,
                          cudaStream_t stream) {
  const dim3 grid(ScanBlocks(num_tokens), kv_heads * group);
  const int table_floats = subspaces * ksub;
  if (table_floats <= kMaxSharedTableFloats) {
    AdcScanKernel<true><<<grid, kScanThreads, table_floats * sizeof(float), stream>>>(
        tables, codes, group, subspaces, ksub, num_tokens, code_stride, scale, logits, partial_max,
        partial_sum);
  } else {
    AdcScanKernel<false><<<grid, kScanThreads, 0, stream>>>(tables, codes, group, subspaces, ksub,
                                                            num_tokens, code_stride, scale, logits,
                                                            partial_max, partial_sum);
  }
  return cudaGetLastError();
}

cudaError_t LaunchSoftmaxNormalizers(const float* partial_max, const float* partial_sum,
                                     int query_heads, int blocks, float* max, float* inv_sum,
                                     cudaStream_t stream) {
  SoftmaxNormalizersKernel<<<query_heads, kNormalizerThreads, 0, stream>>>(partial_max, partial_sum,
                                                                           blocks, max, inv_sum);
  return cudaGetLastError();
}

cudaError_t LaunchGqaScores(const float* logits, const float* max, const float* inv_sum,
                            int kv_heads, int group, uint32_t num_tokens, float scale,
                            float* scores, cudaStream_t stream) {
  int blocks = CeilDiv(num_tokens, kScoreThreads);
  if (blocks > kMaxScoreBlocks) blocks = kMaxScoreBlocks;
  GqaScoresKernel<<<dim3(blocks, kv_heads), kScoreThreads, 0, stream>>>(logits, max, inv_sum, group,
                                                                        num_tokens, scale, scores);
  return cudaGetLastError();
}

}  // namespace pqkv::kernels::cuda

// Steps 2 and 3 of the layer retrieval: the ADC scan of every query head over its kv
// head's codes, the softmax normaliser of each query head over all tokens, and the GQA
// score of each kv head (the sum of its query heads' softmax probabilities).
//
// Three launches: the scan writes the logits and one (max, sum) normaliser per token
// block (an online softmax), a second kernel merges the blocks' normalisers per query
// head, a third turns logits into probabilities and sums each group.
//
// The scan reads each token's codes once for a chunk of the kv head's query heads (the
// whole group when their tables fit in shared memory), and for M = 2 it can look up a
// joined table, table0[c0] + table1[c1] for every code pair, built per block in shared
// memory: one lookup per token and query head instead of two. Building it costs ksub^2
// additions per query head and block, so the plan gives joined blocks more tokens.
#include <math_constants.h>

#include "kernels/cuda/device_reduce.cuh"
#include "kernels/cuda/retrieval_launchers.h"

namespace pqkv::kernels::cuda {
namespace {

constexpr int kScanThreads = 256;
constexpr int kTokensPerThread = 4;
constexpr int kMaxScanBlocks = 2048;
// Query heads one scan block handles: the per-thread normalisers live in registers.
constexpr int kMaxChunk = 8;
// Shared memory a launch gets without opting in, less the block reduction's 256 bytes
// and some slack.
constexpr size_t kDefaultSharedBytes = 47 * 1024;
constexpr int kNormalizerThreads = 256;
constexpr int kScoreThreads = 256;
constexpr int kMaxScoreBlocks = 4096;

enum class Lookup { kGlobalTable, kSharedTable, kJoinedTable };

// Grid (token block, kv head x chunk). Block (b, h * chunks + c) handles query heads
// q0 .. q0 + heads - 1 of kv head h, q0 = h * G + c * chunk. Each thread scans tokens
// t = its index + j * (grid stride), reading each token's codes once for all of them
// and keeping one online normaliser per query head; the block's normalisers go to
// partial_{max,sum}[q][blockIdx.x].
template <Lookup kLookup>
__global__ void __launch_bounds__(kScanThreads)
    GroupedScanKernel(const float* __restrict__ tables, const uint8_t* __restrict__ codes,
                      int group, int chunk, int subspaces, int ksub, uint32_t num_tokens,
                      uint32_t code_stride, float scale, float* __restrict__ logits,
                      float* __restrict__ partial_max, float* __restrict__ partial_sum) {
  extern __shared__ float shared_tables[];
  const int chunks = (group + chunk - 1) / chunk;
  const int h = blockIdx.y / chunks;
  const int q0 = h * group + (blockIdx.y % chunks) * chunk;
  const int heads = min(chunk, h * group + group - q0);
  const int source_size = subspaces * ksub;  // floats of one query head's tables
  const int table_size = kLookup == Lookup::kJoinedTable ? ksub * ksub : source_size;
  const float* table = tables + static_cast<size_t>(q0) * source_size;
  if (kLookup == Lookup::kSharedTable) {
    // The chunk's tables are contiguous in tables[Q][M][ksub].
    for (int i = threadIdx.x; i < heads * table_size; i += blockDim.x) {
      shared_tables[i] = table[i];
    }
  } else if (kLookup == Lookup::kJoinedTable) {
    // joined[g][c0 * ksub + c1] = table[g][0][c0] + table[g][1][c1]: the sum the plain
    // scan forms for that pair, 0 + t0 + t1, with the same rounding.
    const int shift = __ffs(ksub) - 1;
    for (int i = threadIdx.x; i < heads * table_size; i += blockDim.x) {
      const int g = i / table_size;
      const int pair = i - g * table_size;
      const float* source = table + g * source_size;
      shared_tables[i] = __fadd_rn(source[pair >> shift], source[ksub + (pair & (ksub - 1))]);
    }
  }
  if (kLookup != Lookup::kGlobalTable) {
    __syncthreads();
    table = shared_tables;
  }
  const uint8_t* head_codes = codes + static_cast<size_t>(h) * code_stride * subspaces;
  float* out = logits + static_cast<size_t>(q0) * num_tokens;
  const unsigned mask = static_cast<unsigned>(ksub - 1);
  float run_max[kMaxChunk];
  float run_sum[kMaxChunk];
#pragma unroll
  for (int g = 0; g < kMaxChunk; ++g) {
    run_max[g] = -CUDART_INF_F;
    run_sum[g] = 0.0f;
  }
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < num_tokens; t += stride) {
    const uint8_t* code = head_codes + static_cast<size_t>(t) * subspaces;
    int joined = 0;
    if (kLookup == Lookup::kJoinedTable) {
      joined = static_cast<int>((code[0] & mask) * ksub + (code[1] & mask));
    }
#pragma unroll
    for (int g = 0; g < kMaxChunk; ++g) {
      if (g < heads) {
        const float* head_table = table + g * table_size;
        float logit = 0.0f;
        if (kLookup == Lookup::kJoinedTable) {
          logit = head_table[joined];
        } else {
          for (int m = 0; m < subspaces; ++m) logit += head_table[m * ksub + (code[m] & mask)];
        }
        out[static_cast<size_t>(g) * num_tokens + t] = logit;
        // The reference's exponent: scale * logit rounded, then minus the max.
        CombineMaxSum(run_max[g], run_sum[g], __fmul_rn(scale, logit), 1.0f);
      }
    }
  }
#pragma unroll
  for (int g = 0; g < kMaxChunk; ++g) {
    if (g < heads) {  // the same for the whole block
      BlockReduceMaxSum(run_max[g], run_sum[g]);
      if (threadIdx.x == 0) {
        const size_t slot = static_cast<size_t>(q0 + g) * gridDim.x + blockIdx.x;
        partial_max[slot] = run_max[g];
        partial_sum[slot] = run_sum[g];
      }
      __syncthreads();  // the reduction's shared slots are reused for the next head
    }
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

cudaError_t PlanAdcScan(int kv_heads, int group, int subspaces, int ksub, uint32_t num_tokens,
                        ScanMode mode, ScanPlan* plan) {
  // Shared memory per block: the device's opt-in limit, which LaunchAdcScan raises the
  // kernel's attribute to when a plan needs more than the default.
  int device = 0;
  int optin = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (error != cudaSuccess) return error;
  const size_t limit = optin > static_cast<int>(kDefaultSharedBytes)
                           ? static_cast<size_t>(optin) - 1024
                           : kDefaultSharedBytes;
  const size_t head_bytes = static_cast<size_t>(subspaces) * ksub * sizeof(float);
  const size_t joined_head_bytes = static_cast<size_t>(ksub) * ksub * sizeof(float);
  const bool can_join = subspaces == 2 && joined_head_bytes <= limit;
  // A joined block builds ksub^2 entries per query head; it saves one lookup per token
  // and query head, so it pays from about 2 ksub^2 tokens per block on.
  const uint32_t joined_tokens_per_block = 2u * static_cast<uint32_t>(ksub * ksub);
  bool joined = false;
  switch (mode) {
    case ScanMode::kAuto:
      joined = can_join && num_tokens >= 4u * joined_tokens_per_block;
      break;
    case ScanMode::kGrouped:
      joined = false;
      break;
    case ScanMode::kJoined:
      joined = can_join;
      break;
  }
  const size_t bytes_per_head = joined ? joined_head_bytes : head_bytes;
  plan->joined = joined;
  plan->shared_table = joined || bytes_per_head <= limit;
  int chunk = group < kMaxChunk ? group : kMaxChunk;
  if (plan->shared_table) {
    // The fewest chunks that fit, then spread the group evenly over them.
    const int fits = static_cast<int>(limit / bytes_per_head);
    if (chunk > fits) chunk = fits;
    const int chunks = (group + chunk - 1) / chunk;
    chunk = (group + chunks - 1) / chunks;
  }
  plan->chunk = chunk;
  plan->shared_bytes = plan->shared_table ? chunk * bytes_per_head : 0;
  const uint32_t tokens_per_block =
      joined ? joined_tokens_per_block : kScanThreads * kTokensPerThread;
  const int blocks = CeilDiv(num_tokens, tokens_per_block);
  plan->token_blocks = blocks < 1 ? 1 : (blocks > kMaxScanBlocks ? kMaxScanBlocks : blocks);
  return cudaSuccess;
}

cudaError_t LaunchAdcScan(const ScanPlan& plan, const float* tables, const uint8_t* codes,
                          int kv_heads, int group, int subspaces, int ksub, uint32_t num_tokens,
                          uint32_t code_stride, float scale, float* logits, float* partial_max,
                          float* partial_sum, cudaStream_t stream) {
  const int chunks = (group + plan.chunk - 1) / plan.chunk;
  const dim3 grid(plan.token_blocks, kv_heads * chunks);
  const auto launch = [&](auto kernel) {
    if (plan.shared_bytes > kDefaultSharedBytes) {
      const cudaError_t error = cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.shared_bytes));
      if (error != cudaSuccess) return error;
    }
    kernel<<<grid, kScanThreads, plan.shared_bytes, stream>>>(
        tables, codes, group, plan.chunk, subspaces, ksub, num_tokens, code_stride, scale, logits,
        partial_max, partial_sum);
    return cudaGetLastError();
  };
  if (plan.joined) return launch(GroupedScanKernel<Lookup::kJoinedTable>);
  if (plan.shared_table) return launch(GroupedScanKernel<Lookup::kSharedTable>);
  return launch(GroupedScanKernel<Lookup::kGlobalTable>);
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

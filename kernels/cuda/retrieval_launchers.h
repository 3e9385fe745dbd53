// Launchers of the CUDA retrieval kernels, one group per .cu file of this directory.
// Internal to kernels/cuda: CudaLayerRetriever (pq_retrieval_cuda.h) validates the
// arguments, owns the buffers and wraps the returned cudaError_t into absl::Status.
//
// Host-compilable (CUDA runtime types, no device code), so the .cc that calls the
// launchers builds with the host compiler. Each launcher enqueues its kernels on
// `stream`, never synchronizes, and returns the launch status; errors of the kernels
// themselves surface at the next synchronization. Pointers are device pointers (device
// memory, or pinned host memory mapped into the device's address space) unless stated.
// Notation: H kv heads, G query heads per kv head (query head q belongs to kv head
// q / G), M sub-spaces of dsub dims, ksub centroids per sub-space (a power of two <= 256),
// n tokens.
#ifndef PQKV_KERNELS_CUDA_RETRIEVAL_LAUNCHERS_H_
#define PQKV_KERNELS_CUDA_RETRIEVAL_LAUNCHERS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/scan_mode.h"

namespace pqkv::kernels::cuda {

// pq_table.cu. Step 1: tables[q][m][c] = <queries[q][m*dsub .. (m+1)*dsub),
// centroids[q / G][m][c][0 .. dsub)>, summed in dimension order with separate fp32
// roundings like kernels::ComputeInnerProductTable.
// queries: fp32 [H*G][M*dsub]. centroids: fp32 [H][M][ksub][dsub]. tables: fp32
// [H*G][M][ksub]. Requires H, M <= 65535.
cudaError_t LaunchInnerProductTables(const float* queries, const float* centroids, int kv_heads,
                                     int group, int subspaces, int ksub, int dsub, float* tables,
                                     cudaStream_t stream);

// adc_softmax.cu. How the scan of n tokens runs: which tables it looks up, how many of a
// kv head's query heads one block scans (reading each token's codes once for them), and
// the number of token blocks, the length of each query head's row of partial
// normalisers.
struct ScanPlan {
  bool joined = false;        // one table of every code pair (M = 2)
  bool shared_table = false;  // tables staged in shared memory (always when joined)
  int chunk = 1;              // query heads per block, <= G
  int token_blocks = 1;
  size_t shared_bytes = 0;  // dynamic shared memory per block
};
// Plans for the current device (its shared memory per block decides the chunk).
cudaError_t PlanAdcScan(int kv_heads, int group, int subspaces, int ksub, uint32_t num_tokens,
                        ScanMode mode, ScanPlan* plan);

// Step 2 and the per-block half of step 3: logits[q][t] = sum over m in order of
// tables[q][m][codes[q / G][t][m]], and for each query head q and token block b the
// softmax normaliser of scale * logits[q][t] over the block's tokens:
// partial_max[q][b] = max, partial_sum[q][b] = sum exp(scale * logit - max).
// tables: fp32 [H*G][M][ksub]. codes: uint8 [H][code_stride][M] (code_stride >= n; tokens
// [n, code_stride) of each head are not read), each < ksub (higher bits are masked off).
// logits: fp32 [H*G][n]. partial_max, partial_sum: fp32 [H*G][plan.token_blocks].
// plan: PlanAdcScan's for the same arguments. Requires H*G <= 65535, n < 2^31.
cudaError_t LaunchAdcScan(const ScanPlan& plan, const float* tables, const uint8_t* codes,
                          int kv_heads, int group, int subspaces, int ksub, uint32_t num_tokens,
                          uint32_t code_stride, float scale, float* logits, float* partial_max,
                          float* partial_sum, cudaStream_t stream);

// Step 3, normalisers: per query head, max[q] = max over blocks, inv_sum[q] = 1 / sum over
// blocks of partial_sum * exp(partial_max - max) (summed in fp64).
// partial_max, partial_sum: fp32 [query_heads][blocks]. max, inv_sum: fp32 [query_heads].
cudaError_t LaunchSoftmaxNormalizers(const float* partial_max, const float* partial_sum,
                                     int query_heads, int blocks, float* max, float* inv_sum,
                                     cudaStream_t stream);

// Step 3, scores: scores[h][t] = sum over g in order of
// exp(scale * logits[h*G + g][t] - max[h*G + g]) * inv_sum[h*G + g].
// logits: fp32 [H*G][n]. max, inv_sum: fp32 [H*G]. scores: fp32 [H][n].
cudaError_t LaunchGqaScores(const float* logits, const float* max, const float* inv_sum,
                            int kv_heads, int group, uint32_t num_tokens, float scale,
                            float* scores, cudaStream_t stream);

// top_k.cu. Step 4: device scratch bytes LaunchTopK needs for `heads` rows of
// `candidates` positions each. Requires heads * candidates < 2^31.
cudaError_t TopKScratchBytes(int heads, uint32_t candidates, size_t* bytes);

// Step 4: per head h, the k positions p in [begin, end) with the largest scores[h][p],
// best first, equal scores by lower position (kernels::TopK's contract), and their
// scores. A radix select of each head's k best when k * 4 <= end - begin, then a stable
// radix sort (CUB) of the winners' (head, score) keys; otherwise the sort of every
// candidate (see top_k.cu).
// scores: fp32 [heads][n], no NaN. scratch: TopKScratchBytes(heads, end - begin) bytes.
// positions: uint32 [heads][k]. top_scores: fp32 [heads][k].
// Requires 0 < k <= end - begin, end <= n.
cudaError_t LaunchTopK(const float* scores, int heads, uint32_t num_tokens, uint32_t begin,
                       uint32_t end, uint32_t k, void* scratch, size_t scratch_bytes,
                       uint32_t* positions, float* top_scores, cudaStream_t stream);

// gather_rows.cu. Packs rows: out[0][h][j] = keys[h][positions[h][j]] and
// out[1][h][j] = values[h][positions[h][j]], each row `row_bytes` raw bytes.
// keys, values: [H][n][row_bytes]. positions: uint32 [H][k], each < n (not checked
// here). out: [2][H][k][row_bytes]. Copies 16, 8, 4 or 1 bytes per access, the widest
// that row_bytes and the three buffers' alignment allow.
cudaError_t LaunchGatherRows(const void* keys, const void* values, int kv_heads,
                             uint32_t num_tokens, size_t row_bytes, const uint32_t* positions,
                             uint32_t k, void* out, cudaStream_t stream);

}  // namespace pqkv::kernels::cuda

#endif  // PQKV_KERNELS_CUDA_RETRIEVAL_LAUNCHERS_H_

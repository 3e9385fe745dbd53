// CUDA PQ retrieval of one layer: the inner-product tables, the ADC scan, the GQA
// softmax-sum and the per-kv-head top-k of PQCache in one launch sequence on one stream,
// plus a gather that packs the selected K/V rows into one contiguous (pinned) buffer
// (tested and timed; the server does not use it, as its paged host arena is not
// registered with CUDA).
// The plain kernels in kernels/pq_scan.h, kernels/gqa_softmax.h and kernels/top_k.h are
// the contract and the test oracle of every step.
//
// Host header: no CUDA types. The kernels and their launchers are in this directory's
// .cu files. Binaries link the CUDA runtime statically and start on machines without
// CUDA: there CudaDeviceAvailable() is false and CudaLayerRetriever::Create fails with
// UNAVAILABLE.
//
// Thread-safety: CudaDeviceAvailable() is thread-safe. A CudaLayerRetriever is not: it
// owns one stream and its device buffers, so calls on one object are serialized by the
// caller (the GPU's executor thread owns it); distinct objects may run concurrently.
// Every method blocks until its results are on the host: never call one from a gRPC
// reaction.
//
// Notation: H kv heads; G = query_heads / H query heads per kv head, query head q
// belonging to kv head q / G; M sub-spaces of dsub dims (head_dim d = M * dsub);
// ksub = 2^bits centroids per sub-space (bits 0..8); n tokens.
#ifndef PQKV_KERNELS_CUDA_PQ_RETRIEVAL_CUDA_H_
#define PQKV_KERNELS_CUDA_PQ_RETRIEVAL_CUDA_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/resident_layer.h"
#include "kernels/cuda/scan_mode.h"
#include "kernels/pq_scan.h"

namespace pqkv::kernels::cuda {

// Whether the CUDA runtime finds at least one device (false without a driver).
bool CudaDeviceAvailable();

// Shape of one layer's retrieval.
struct CudaLayerShape {
  int kv_heads = 0;     // H, >= 1
  int query_heads = 0;  // H * G, a multiple of kv_heads, <= 65535
  // M (<= 65535), ksub (a power of two <= 256) and dsub; the same for every kv head.
  PqShape pq;

  int group_size() const { return kv_heads > 0 ? query_heads / kv_heads : 0; }
  int head_dim() const { return pq.dim(); }
};

// Host inputs of one layer's retrieval; read during the call only.
struct LayerRetrievalInput {
  CudaLayerShape shape;
  // Queries, fp32, layout (query_head, dim): [query_heads][head_dim].
  const float* queries = nullptr;
  // Each kv head's codebook, fp32, layout (kv_head, subspace, centroid, subspace_dim):
  // [H][M][ksub][dsub] (FAISS ProductQuantizer layout per head).
  const float* centroids = nullptr;
  // PQ codes, uint8, layout (kv_head, token, subspace): [H][n][M], one byte per code,
  // every code < ksub (higher bits are masked off, never read out of bounds).
  const uint8_t* codes = nullptr;
  // n, >= 1; H * n < 2^31.
  uint32_t num_tokens = 0;
  // Top-k candidates: positions [candidate_begin, candidate_end), end <= n. The softmax
  // still runs over all n tokens (sinks and the recent window count in the normaliser).
  uint32_t candidate_begin = 0;
  uint32_t candidate_end = 0;
  // Positions selected per kv head, <= candidate_end - candidate_begin; 0 skips step 4.
  uint32_t k = 0;

  // Optional: the layer's codebooks and codes kept on the device between calls (see
  // resident_layer.h), of this retriever's device and this shape's kv_heads and pq.
  // When set, `centroids` and `codes` are not read: the call first uploads
  // head_centroids if the layer has none yet, and the codes of tokens
  // [resident->num_tokens(), num_tokens) from head_codes (n may not shrink), then scans
  // the resident codes. The codebooks are taken as unchanged once uploaded.
  ResidentLayer* resident = nullptr;
  // [H] pointers: kv head h's codebook, fp32 [M][ksub][dsub].
  const float* const* head_centroids = nullptr;
  // [H] pointers: kv head h's codes, uint8 [n][M] (only the tail is read).
  const uint8_t* const* head_codes = nullptr;
};

// Host outputs of one layer's retrieval, written when the call returns OK. The optional
// buffers (null: not copied back) expose each step's result for tests and debugging.
struct LayerRetrievalOutput {
  // Selected positions, uint32, layout (kv_head, rank): [H][k], best first, equal scores
  // by lower position (kernels::TopK's order). Required when k > 0.
  uint32_t* positions = nullptr;
  // Their scores (the head_scores entries), fp32 [H][k]. Required when k > 0.
  float* scores = nullptr;
  // Step 1, fp32 [query_heads][M][ksub]: table[q][m][c] = <query_q[m*dsub ..
  // (m+1)*dsub), centroid_{q/G}[m][c]>, as kernels::ComputeInnerProductTable.
  float* tables = nullptr;
  // Step 2, fp32 [query_heads][n]: logit_q[t] = sum_m table[q][m][codes[q/G][t][m]], as
  // kernels::AdcScan.
  float* logits = nullptr;
  // Step 3, fp32 [H][n]: score_h[t] = sum over h's query heads q of softmax over all
  // tokens of logit_q * scale, scale = 1 / sqrt(head_dim), as kernels::AccumulateSoftmax.
  float* head_scores = nullptr;
};

// Device time of each phase of one RetrieveLayer call, milliseconds (cudaEvent).
struct LayerTimings {
  float copy_in_ms = 0;       // queries, codebooks and codes (resident: the new ones), in
  float table_ms = 0;         // step 1
  float scan_softmax_ms = 0;  // steps 2 and 3
  float top_k_ms = 0;         // step 4
  float copy_out_ms = 0;      // results, device to host
  float kernels_ms() const { return table_ms + scan_softmax_ms + top_k_ms; }
  float total_ms() const { return copy_in_ms + kernels_ms() + copy_out_ms; }
};

// Rows to pack with CudaLayerRetriever::Gather. Row buffers must be accessible from the
// retriever's device: device memory of that device (cudaMalloc) or pinned host memory
// (cudaHostAlloc / cudaMallocHost / cudaHostRegister), which the kernel reads or writes
// over the bus. Pageable host memory is rejected.
struct GatherRequest {
  int kv_heads = 0;         // H, >= 1
  uint32_t num_tokens = 0;  // n: rows per kv head in keys and values
  // Bytes of one row: head_dim * element bytes (fp16/bf16: 2, fp32: 4), copied as raw
  // bytes. Rows of 16-byte multiples in 16-byte aligned buffers copy fastest.
  size_t row_bytes = 0;
  // K and V rows, raw bytes, layout (kv_head, token, byte): [H][n][row_bytes] each.
  const void* keys = nullptr;
  const void* values = nullptr;
  // Rows to take, host memory, uint32, layout (kv_head, rank): [H][k], each < n;
  // repeats allowed (e.g. LayerRetrievalOutput::positions).
  const uint32_t* positions = nullptr;
  uint32_t k = 0;
  // Output, raw bytes: the K rows [H][k][row_bytes] followed by the V rows
  // [H][k][row_bytes]; 2 * H * k * row_bytes bytes.
  void* out = nullptr;
};

// Runs PQ retrieval layers on one CUDA device. Owns a non-blocking stream and device
// buffers that grow geometrically (to at least 1.5 times their old size) to the largest
// layer seen and are reused, so that a layer growing by one token per call reallocates
// once every half again as many tokens, not on every call.
class CudaLayerRetriever {
 public:
  // UNAVAILABLE when there is no CUDA device or driver; INVALID_ARGUMENT for a device
  // index out of range.
  static absl::StatusOr<std::unique_ptr<CudaLayerRetriever>> Create(int device = 0);

  ~CudaLayerRetriever();
  CudaLayerRetriever(const CudaLayerRetriever&) = delete;
  CudaLayerRetriever& operator=(const CudaLayerRetriever&) = delete;

  // Steps 1-4 for one layer: copies the inputs in, runs the launch sequence on the
  // stream, copies the outputs out and waits. The queries go in, and the positions and
  // scores come back, through pinned staging buffers the retriever keeps. INVALID_ARGUMENT
  // for a bad shape, range, k, missing buffer or a resident layer that does not match;
  // RESOURCE_EXHAUSTED when device or pinned memory runs out; INTERNAL for a CUDA failure.
  // `timings`, when not null, receives each phase's device time.
  absl::Status RetrieveLayer(const LayerRetrievalInput& input, const LayerRetrievalOutput& output,
                             LayerTimings* timings = nullptr);

  // Step 4 alone: per head h, the k positions in [begin, end) with the largest
  // scores[h][p], best first, equal scores by lower position (kernels::TopK), and their
  // scores. scores: host fp32 [heads][n], no NaN; heads * n < 2^31. positions: host
  // uint32 [heads][k]; top_scores: host fp32 [heads][k] or null.
  absl::Status TopK(const float* scores, int heads, uint32_t num_tokens, uint32_t begin,
                    uint32_t end, uint32_t k, uint32_t* positions, float* top_scores);

  // Packs the rows `request.positions` selects into `request.out` (see GatherRequest)
  // and waits. INVALID_ARGUMENT for a position >= n or a buffer the device cannot
  // access. `kernel_ms`, when not null, receives the gather kernel's device time.
  absl::Status Gather(const GatherRequest& request, float* kernel_ms = nullptr);

  int device() const;
  // The ADC scan RetrieveLayer runs (scan_mode.h); kAuto unless set. Every mode gives the
  // same logits; the scores may differ in the last bits (the normalisers' order).
  void set_scan_mode(ScanMode mode);
  ScanMode scan_mode() const;
  // cudaMalloc calls of the retriever's own buffers so far (tests: growth is geometric).
  uint64_t device_allocations() const;

 private:
  struct Impl;
  explicit CudaLayerRetriever(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pqkv::kernels::cuda

#endif  // PQKV_KERNELS_CUDA_PQ_RETRIEVAL_CUDA_H_

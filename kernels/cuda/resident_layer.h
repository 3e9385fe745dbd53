// ResidentLayer: one layer's PQ codebooks and codes kept on a CUDA device between
// retrievals, so that a decode step uploads only the codes of the tokens encoded since
// the step before (the codebooks once), not the whole layer's: at 131072 tokens x 8 kv
// heads that is 2 MiB (2 x 6 bits) to 4 MiB (4 x 8) a call, against 16-32 bytes.
// CudaLayerRetriever::RetrieveLayer fills and reads it (LayerRetrievalInput::resident).
//
// Device layout: centroids fp32 [H][M][ksub][dsub]; codes uint8 [H][capacity][M], the
// first num_tokens() tokens of each head valid. The capacity grows geometrically (to at
// least 1.5 times its old value), so a layer growing by one token per call is copied to
// a larger allocation once every half again as many tokens.
//
// Host header: no CUDA types. Not thread-safe: the retriever uses it on its stream, under
// its caller's serialisation (GpuScorer's lock). Destroying it frees its device memory
// (cudaFree waits for the device); no call may be using it then.
#ifndef PQKV_KERNELS_CUDA_RESIDENT_LAYER_H_
#define PQKV_KERNELS_CUDA_RESIDENT_LAYER_H_

#include <cstddef>
#include <cstdint>

#include "kernels/pq_scan.h"

namespace pqkv::kernels::cuda {

class ResidentLayer {
 public:
  // Holds nothing on the device until the first RetrieveLayer that uses it. device: the
  // CUDA device of the retriever that will use it.
  ResidentLayer(int device, int kv_heads, const PqShape& pq);
  ~ResidentLayer();
  ResidentLayer(const ResidentLayer&) = delete;
  ResidentLayer& operator=(const ResidentLayer&) = delete;

  int device() const { return device_; }
  int kv_heads() const { return kv_heads_; }
  const PqShape& pq() const { return pq_; }
  // Tokens whose codes are on the device (per kv head).
  uint32_t num_tokens() const { return num_tokens_; }
  // Tokens the device allocation holds per kv head (>= num_tokens()).
  uint32_t capacity() const { return capacity_; }
  bool has_centroids() const { return centroids_ != nullptr; }
  // Device bytes held: codebooks plus the codes' allocation.
  size_t device_bytes() const;

 private:
  friend class CudaLayerRetriever;

  const int device_;
  const int kv_heads_;
  const PqShape pq_;
  void* centroids_ = nullptr;  // device, fp32 [H][M][ksub][dsub]
  void* codes_ = nullptr;      // device, uint8 [H][capacity_][M]
  uint32_t capacity_ = 0;
  uint32_t num_tokens_ = 0;
};

}  // namespace pqkv::kernels::cuda

#endif  // PQKV_KERNELS_CUDA_RESIDENT_LAYER_H_

#include "kernels/cuda/pq_retrieval_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/retrieval_launchers.h"

namespace pqkv::kernels::cuda {
namespace {

constexpr int kMaxGridY = 65535;
constexpr uint64_t kMaxItems = std::numeric_limits<int32_t>::max();

// Pinned (page-locked) host memory that grows like DeviceBuffer; staging for the small
// per-call copies (queries in; positions and scores out; a resident layer's new codes),
// so that they are DMA from and to memory the device can reach, not pageable copies.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (data_ != nullptr) cudaFreeHost(data_);
  }

  // Makes room for `bytes`; the contents are not kept. No copy may be pending on it.
  absl::Status Reserve(size_t bytes) {
    if (bytes <= capacity_) return absl::OkStatus();
    const size_t target = std::max(bytes, capacity_ + capacity_ / 2);
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = nullptr;
    capacity_ = 0;
    const cudaError_t error = cudaHostAlloc(&data_, target, cudaHostAllocDefault);
    if (error != cudaSuccess) {
      cudaGetLastError();
      data_ = nullptr;
      return CudaStatus(error, absl::StrCat("cudaHostAlloc of ", target, " bytes"));
    }
    capacity_ = target;
    return absl::OkStatus();
  }

  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

bool IsPowerOfTwo(int v) { return v > 0 && (v & (v - 1)) == 0; }

absl::Status ValidateShape(const CudaLayerShape& s) {
  if (s.kv_heads < 1 || s.query_heads < s.kv_heads || s.query_heads % s.kv_heads != 0 ||
      s.query_heads > kMaxGridY) {
    return absl::InvalidArgumentError(absl::StrCat("query_heads (", s.query_heads,
                                                   ") must be a positive multiple of kv_heads (",
                                                   s.kv_heads, ") and at most ", kMaxGridY));
  }
  if (s.pq.subspaces < 1 || s.pq.subspaces > kMaxGridY || s.pq.subspace_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad PQ shape: M = ", s.pq.subspaces, ", dsub = ", s.pq.subspace_dim));
  }
  if (!IsPowerOfTwo(s.pq.centroids_per_subspace) || s.pq.centroids_per_subspace > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "centroids_per_subspace must be a power of two <= 256, got ", s.pq.centroids_per_subspace));
  }
  return absl::OkStatus();
}

absl::Status ValidateTopK(int heads, uint32_t num_tokens, uint32_t begin, uint32_t end,
                          uint32_t k) {
  if (heads < 1) return absl::InvalidArgumentError("heads must be >= 1");
  if (num_tokens < 1 || static_cast<uint64_t>(heads) * num_tokens > kMaxItems) {
    return absl::InvalidArgumentError(
        absl::StrCat("heads * num_tokens must be in [1, 2^31), got ", heads, " * ", num_tokens));
  }
  if (begin > end || end > num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("candidate range [", begin, ", ", end,
                                                   ") is not within [0, ", num_tokens, ")"));
  }
  if (k > end - begin) {
    return absl::InvalidArgumentError(
        absl::StrCat("k = ", k, " is larger than the ", end - begin, " candidates"));
  }
  return absl::OkStatus();
}

// The pointer the device uses for `p`: device memory of `device`, pinned (mapped) host
// memory or managed memory; INVALID_ARGUMENT for pageable host memory.
absl::StatusOr<void*> DevicePointer(const void* p, int device, const char* name) {
  if (p == nullptr) return absl::InvalidArgumentError(absl::StrCat(name, " is null"));
  cudaPointerAttributes attributes;
  const cudaError_t error = cudaPointerGetAttributes(&attributes, p);
  if (error != cudaSuccess) {
    cudaGetLastError();
    return CudaStatus(error, absl::StrCat("cudaPointerGetAttributes(", name, ")"));
  }
  switch (attributes.type) {
    case cudaMemoryTypeDevice:
      if (attributes.device != device) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, " is memory of device ", attributes.device, ", not ", device));
      }
      return attributes.devicePointer;
    case cudaMemoryTypeHost:
    case cudaMemoryTypeManaged:
      if (attributes.devicePointer == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, " is host memory not mapped into device ", device));
      }
      return attributes.devicePointer;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(name, " is pageable host memory; use device memory or pinned host ",
                       "memory (cudaHostAlloc / cudaHostRegister)"));
  }
}

}  // namespace

bool CudaDeviceAvailable() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) cudaGetLastError();
  return error == cudaSuccess && count > 0;
}

struct CudaLayerRetriever::Impl {
  // Events that bracket the phases of one call (see LayerTimings).
  enum Phase { kStart, kCopiedIn, kTables, kScores, kTopK, kCopiedOut, kPhases };

  int device = 0;
  ScanMode scan_mode = ScanMode::kAuto;
  cudaStream_t stream = nullptr;
  std::array<cudaEvent_t, kPhases> events{};

  DeviceBuffer queries, centroids, codes, tables, logits, partial_max, partial_sum, max, inv_sum,
      head_scores, top_k_scratch, positions, top_scores;
  uint64_t allocations = 0;  // cudaMalloc calls of the buffers above
  PinnedBuffer query_staging, code_staging, positions_staging, scores_staging;

  absl::Status Reserve(DeviceBuffer& buffer, size_t bytes) {
    return buffer.Reserve(bytes, &allocations);
  }

  ~Impl() {
    cudaSetDevice(device);
    for (cudaEvent_t event : events) {
      if (event != nullptr) cudaEventDestroy(event);
    }
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  absl::Status Record(Phase phase, bool timed) {
    if (!timed) return absl::OkStatus();
    RETURN_IF_CUDA_ERROR(cudaEventRecord(events[phase], stream));
    return absl::OkStatus();
  }

  float Elapsed(Phase from, Phase to) const {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, events[from], events[to]) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return ms;
  }

  template <typename T>
  absl::Status CopyIn(DeviceBuffer& buffer, const T* host, size_t count) {
    RETURN_IF_ERROR(Reserve(buffer, count * sizeof(T)));
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(buffer.as<void>(), host, count * sizeof(T),
                                         cudaMemcpyHostToDevice, stream));
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status CopyOut(T* host, const DeviceBuffer& buffer, size_t count) {
    if (host == nullptr || count == 0) return absl::OkStatus();
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(host, buffer.as<void>(), count * sizeof(T),
                                         cudaMemcpyDeviceToHost, stream));
    return absl::OkStatus();
  }

  // Step 4 on head_scores [heads][n] into positions and top_scores [heads][k].
  absl::Status EnqueueTopK(int heads, uint32_t n, uint32_t begin, uint32_t end, uint32_t k) {
    size_t scratch_bytes = 0;
    RETURN_IF_CUDA_ERROR(TopKScratchBytes(heads, end - begin, &scratch_bytes));
    RETURN_IF_ERROR(Reserve(top_k_scratch, scratch_bytes));
    RETURN_IF_ERROR(Reserve(positions, static_cast<size_t>(heads) * k * sizeof(uint32_t)));
    RETURN_IF_ERROR(Reserve(top_scores, static_cast<size_t>(heads) * k * sizeof(float)));
    RETURN_IF_CUDA_ERROR(LaunchTopK(head_scores.as<float>(), heads, n, begin, end, k,
                                    top_k_scratch.as<void>(), top_k_scratch.capacity(),
                                    positions.as<uint32_t>(), top_scores.as<float>(), stream));
    return absl::OkStatus();
  }

  absl::Status EnqueueRetrieval(const LayerRetrievalInput& in, const LayerRetrievalOutput& out,
                                bool timed) {
    const CudaLayerShape& s = in.shape;
    const int H = s.kv_heads;
    const int Q = s.query_heads;
    const int G = s.group_size();
    const int M = s.pq.subspaces;
    const int ksub = s.pq.centroids_per_subspace;
    const int dsub = s.pq.subspace_dim;
    const size_t d = static_cast<size_t>(s.head_dim());
    const uint32_t n = in.num_tokens;
    ScanPlan plan;
    RETURN_IF_CUDA_ERROR(PlanAdcScan(H, G, M, ksub, n, scan_mode, &plan));
    const int blocks = plan.token_blocks;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));

    RETURN_IF_ERROR(Record(kStart, timed));
    const size_t query_bytes = Q * d * sizeof(float);
    RETURN_IF_ERROR(query_staging.Reserve(query_bytes));
    std::memcpy(query_staging.as<void>(), in.queries, query_bytes);
    RETURN_IF_ERROR(Reserve(queries, query_bytes));
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(queries.as<void>(), query_staging.as<void>(), query_bytes,
                                         cudaMemcpyHostToDevice, stream));
    const float* layer_centroids = nullptr;
    const uint8_t* layer_codes = nullptr;
    uint32_t code_stride = n;
    if (in.resident != nullptr) {
      RETURN_IF_ERROR(SyncResident(in));
      layer_centroids = static_cast<const float*>(in.resident->centroids_);
      layer_codes = static_cast<const uint8_t*>(in.resident->codes_);
      code_stride = in.resident->capacity_;
    } else {
      RETURN_IF_ERROR(CopyIn(centroids, in.centroids, static_cast<size_t>(H) * M * ksub * dsub));
      RETURN_IF_ERROR(CopyIn(codes, in.codes, static_cast<size_t>(H) * n * M));
      layer_centroids = centroids.as<float>();
      layer_codes = codes.as<uint8_t>();
    }
    RETURN_IF_ERROR(Record(kCopiedIn, timed));

    RETURN_IF_ERROR(Reserve(tables, static_cast<size_t>(Q) * M * ksub * sizeof(float)));
    RETURN_IF_CUDA_ERROR(LaunchInnerProductTables(queries.as<float>(), layer_centroids, H, G, M,
                                                  ksub, dsub, tables.as<float>(), stream));
    RETURN_IF_ERROR(Record(kTables, timed));

    RETURN_IF_ERROR(Reserve(logits, static_cast<size_t>(Q) * n * sizeof(float)));
    RETURN_IF_ERROR(Reserve(partial_max, static_cast<size_t>(Q) * blocks * sizeof(float)));
    RETURN_IF_ERROR(Reserve(partial_sum, static_cast<size_t>(Q) * blocks * sizeof(float)));
    RETURN_IF_ERROR(Reserve(max, Q * sizeof(float)));
    RETURN_IF_ERROR(Reserve(inv_sum, Q * sizeof(float)));
    RETURN_IF_ERROR(Reserve(head_scores, static_cast<size_t>(H) * n * sizeof(float)));
    RETURN_IF_CUDA_ERROR(LaunchAdcScan(plan, tables.as<float>(), layer_codes, H, G, M, ksub, n,
                                       code_stride, scale, logits.as<float>(),
                                       partial_max.as<float>(), partial_sum.as<float>(), stream));
    RETURN_IF_CUDA_ERROR(LaunchSoftmaxNormalizers(partial_max.as<float>(), partial_sum.as<float>(),
                                                  Q, blocks, max.as<float>(), inv_sum.as<float>(),
                                                  stream));
    RETURN_IF_CUDA_ERROR(LaunchGqaScores(logits.as<float>(), max.as<float>(), inv_sum.as<float>(),
                                         H, G, n, scale, head_scores.as<float>(), stream));
    RETURN_IF_ERROR(Record(kScores, timed));

    if (in.k > 0) {
      RETURN_IF_ERROR(EnqueueTopK(H, n, in.candidate_begin, in.candidate_end, in.k));
    }
    RETURN_IF_ERROR(Record(kTopK, timed));

    // Positions and scores come back through pinned staging (RetrieveLayer copies them
    // out once the stream is done).
    const size_t selected = static_cast<size_t>(H) * in.k;
    if (selected > 0) {
      RETURN_IF_ERROR(positions_staging.Reserve(selected * sizeof(uint32_t)));
      RETURN_IF_ERROR(scores_staging.Reserve(selected * sizeof(float)));
      RETURN_IF_ERROR(CopyOut(positions_staging.as<uint32_t>(), positions, selected));
      RETURN_IF_ERROR(CopyOut(scores_staging.as<float>(), top_scores, selected));
    }
    RETURN_IF_ERROR(CopyOut(out.tables, tables, static_cast<size_t>(Q) * M * ksub));
    RETURN_IF_ERROR(CopyOut(out.logits, logits, static_cast<size_t>(Q) * n));
    RETURN_IF_ERROR(CopyOut(out.head_scores, head_scores, static_cast<size_t>(H) * n));
    RETURN_IF_ERROR(Record(kCopiedOut, timed));
    return absl::OkStatus();
  }

  // Brings in.resident up to date (see LayerRetrievalInput::resident): the codebooks if
  // it has none, a larger allocation when the codes outgrow it (the old codes copied on
  // the device), then the new tokens' codes through pinned staging in one 2D copy.
  absl::Status SyncResident(const LayerRetrievalInput& in) {
    ResidentLayer& r = *in.resident;
    const size_t H = static_cast<size_t>(r.kv_heads_);
    const size_t M = static_cast<size_t>(r.pq_.subspaces);
    if (r.centroids_ == nullptr) {
      const size_t head_bytes =
          M * r.pq_.centroids_per_subspace * r.pq_.subspace_dim * sizeof(float);
      void* centroids = nullptr;
      cudaError_t error = cudaMalloc(&centroids, H * head_bytes);
      if (error != cudaSuccess) {
        cudaGetLastError();
        return CudaStatus(error, absl::StrCat("cudaMalloc of ", H * head_bytes,
                                              " bytes for a resident layer's codebooks"));
      }
      for (size_t h = 0; h < H && error == cudaSuccess; ++h) {
        error = cudaMemcpyAsync(static_cast<char*>(centroids) + h * head_bytes,
                                in.head_centroids[h], head_bytes, cudaMemcpyHostToDevice, stream);
      }
      if (error != cudaSuccess) {  // the layer stays without codebooks: the next call retries
        cudaStreamSynchronize(stream);
        cudaFree(centroids);
        return CudaStatus(error, "cudaMemcpyAsync of a resident layer's codebooks");
      }
      r.centroids_ = centroids;
    }
    const uint32_t n = in.num_tokens;
    if (n == r.num_tokens_) return absl::OkStatus();
    if (n > r.capacity_) {
      const uint64_t capacity = std::max<uint64_t>(n, uint64_t{r.capacity_} + r.capacity_ / 2);
      void* grown = nullptr;
      const cudaError_t error = cudaMalloc(&grown, H * capacity * M);
      if (error != cudaSuccess) {
        cudaGetLastError();
        return CudaStatus(error, absl::StrCat("cudaMalloc of ", H * capacity * M,
                                              " bytes for a resident layer's codes"));
      }
      if (r.num_tokens_ > 0) {
        const cudaError_t copied =
            cudaMemcpy2DAsync(grown, capacity * M, r.codes_, size_t{r.capacity_} * M,
                              size_t{r.num_tokens_} * M, H, cudaMemcpyDeviceToDevice, stream);
        if (copied == cudaSuccess) cudaStreamSynchronize(stream);
        if (copied != cudaSuccess) {
          cudaFree(grown);
          return CudaStatus(copied, "cudaMemcpy2DAsync of a resident layer's codes");
        }
      }
      if (r.codes_ != nullptr) cudaFree(r.codes_);
      r.codes_ = grown;
      r.capacity_ = static_cast<uint32_t>(capacity);
    }
    const size_t row = size_t{n - r.num_tokens_} * M;  // new bytes per kv head
    RETURN_IF_ERROR(code_staging.Reserve(H * row));
    for (size_t h = 0; h < H; ++h) {
      std::memcpy(code_staging.as<uint8_t>() + h * row,
                  in.head_codes[h] + size_t{r.num_tokens_} * M, row);
    }
    RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(
        static_cast<uint8_t*>(r.codes_) + size_t{r.num_tokens_} * M, size_t{r.capacity_} * M,
        code_staging.as<void>(), row, row, H, cudaMemcpyHostToDevice, stream));
    r.num_tokens_ = n;
    return absl::OkStatus();
  }

  // Waits for the stream whatever `enqueued` says, so that no copy into the caller's
  // memory is still in flight when the call returns; the first error wins.
  absl::Status Finish(const absl::Status& enqueued) {
    const absl::Status synced = CudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    return enqueued.ok() ? synced : enqueued;
  }
};

CudaLayerRetriever::CudaLayerRetriever(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudaLayerRetriever::~CudaLayerRetriever() = default;

int CudaLayerRetriever::device() const { return impl_->device; }

void CudaLayerRetriever::set_scan_mode(ScanMode mode) { impl_->scan_mode = mode; }

ScanMode CudaLayerRetriever::scan_mode() const { return impl_->scan_mode; }

uint64_t CudaLayerRetriever::device_allocations() const { return impl_->allocations; }

absl::StatusOr<std::unique_ptr<CudaLayerRetriever>> CudaLayerRetriever::Create(int device) {
  RETURN_IF_ERROR(CheckDevice(device));
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  RETURN_IF_CUDA_ERROR(cudaSetDevice(device));
  RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
  for (cudaEvent_t& event : impl->events) {
    RETURN_IF_CUDA_ERROR(cudaEventCreate(&event));
  }
  return std::unique_ptr<CudaLayerRetriever>(new CudaLayerRetriever(std::move(impl)));
}

absl::Status CudaLayerRetriever::RetrieveLayer(const LayerRetrievalInput& in,
                                               const LayerRetrievalOutput& out,
                                               LayerTimings* timings) {
  RETURN_IF_ERROR(ValidateShape(in.shape));
  RETURN_IF_ERROR(
      ValidateTopK(in.shape.kv_heads, in.num_tokens, in.candidate_begin, in.candidate_end, in.k));
  if (in.queries == nullptr) return absl::InvalidArgumentError("queries are required");
  if (in.resident != nullptr) {
    const ResidentLayer& r = *in.resident;
    const PqShape& pq = in.shape.pq;
    if (r.device() != impl_->device || r.kv_heads() != in.shape.kv_heads ||
        r.pq().subspaces != pq.subspaces ||
        r.pq().centroids_per_subspace != pq.centroids_per_subspace ||
        r.pq().subspace_dim != pq.subspace_dim) {
      return absl::InvalidArgumentError(
          "the resident layer's device, kv heads or PQ shape differ from the call's");
    }
    if (in.num_tokens < r.num_tokens()) {
      return absl::InvalidArgumentError(absl::StrCat("the resident layer holds ", r.num_tokens(),
                                                     " tokens; a call cannot take fewer (",
                                                     in.num_tokens, ")"));
    }
    if (in.head_centroids == nullptr || in.head_codes == nullptr) {
      return absl::InvalidArgumentError("head_centroids and head_codes are required");
    }
  } else if (in.centroids == nullptr || in.codes == nullptr) {
    return absl::InvalidArgumentError("centroids and codes are required");
  }
  if (in.k > 0 && (out.positions == nullptr || out.scores == nullptr)) {
    return absl::InvalidArgumentError("positions and scores are required when k > 0");
  }
  RETURN_IF_CUDA_ERROR(cudaSetDevice(impl_->device));
  cudaGetLastError();  // clear a stale, non-sticky error of an earlier call
  const bool timed = timings != nullptr;
  RETURN_IF_ERROR(impl_->Finish(impl_->EnqueueRetrieval(in, out, timed)));
  const size_t selected = static_cast<size_t>(in.shape.kv_heads) * in.k;
  if (selected > 0) {
    std::memcpy(out.positions, impl_->positions_staging.as<uint32_t>(),
                selected * sizeof(uint32_t));
    std::memcpy(out.scores, impl_->scores_staging.as<float>(), selected * sizeof(float));
  }
  if (timed) {
    timings->copy_in_ms = impl_->Elapsed(Impl::kStart, Impl::kCopiedIn);
    timings->table_ms = impl_->Elapsed(Impl::kCopiedIn, Impl::kTables);
    timings->scan_softmax_ms = impl_->Elapsed(Impl::kTables, Impl::kScores);
    timings->top_k_ms = impl_->Elapsed(Impl::kScores, Impl::kTopK);
    timings->copy_out_ms = impl_->Elapsed(Impl::kTopK, Impl::kCopiedOut);
  }
  return absl::OkStatus();
}

absl::Status CudaLayerRetriever::TopK(const float* scores, int heads, uint32_t num_tokens,
                                      uint32_t begin, uint32_t end, uint32_t k, uint32_t* positions,
                                      float* top_scores) {
  RETURN_IF_ERROR(ValidateTopK(heads, num_tokens, begin, end, k));
  if (k == 0) return absl::OkStatus();
  if (scores == nullptr || positions == nullptr) {
    return absl::InvalidArgumentError("scores and positions are required");
  }
  RETURN_IF_CUDA_ERROR(cudaSetDevice(impl_->device));
  cudaGetLastError();
  Impl& impl = *impl_;
  const auto enqueue = [&]() -> absl::Status {
    RETURN_IF_ERROR(impl.CopyIn(impl.head_scores, scores, static_cast<size_t>(heads) * num_tokens));
    RETURN_IF_ERROR(impl.EnqueueTopK(heads, num_tokens, begin, end, k));
    RETURN_IF_ERROR(impl.CopyOut(positions, impl.positions, static_cast<size_t>(heads) * k));
    return impl.CopyOut(top_scores, impl.top_scores, static_cast<size_t>(heads) * k);
  };
  return impl.Finish(enqueue());
}

absl::Status CudaLayerRetriever::Gather(const GatherRequest& request, float* kernel_ms) {
  const GatherRequest& r = request;
  if (r.kv_heads < 1 || r.num_tokens < 1 || r.row_bytes < 1) {
    return absl::InvalidArgumentError("kv_heads, num_tokens and row_bytes must be positive");
  }
  if (r.k == 0) return absl::OkStatus();
  if (r.positions == nullptr) return absl::InvalidArgumentError("positions is null");
  const size_t selected = static_cast<size_t>(r.kv_heads) * r.k;
  for (size_t i = 0; i < selected; ++i) {
    if (r.positions[i] >= r.num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("positions[", i / r.k, "][", i % r.k,
                                                     "] = ", r.positions[i], " is not below ",
                                                     r.num_tokens));
    }
  }
  Impl& impl = *impl_;
  RETURN_IF_CUDA_ERROR(cudaSetDevice(impl.device));
  cudaGetLastError();
  ASSIGN_OR_RETURN(void* keys, DevicePointer(r.keys, impl.device, "keys"));
  ASSIGN_OR_RETURN(void* values, DevicePointer(r.values, impl.device, "values"));
  ASSIGN_OR_RETURN(void* out, DevicePointer(r.out, impl.device, "out"));
  const bool timed = kernel_ms != nullptr;
  const auto enqueue = [&]() -> absl::Status {
    RETURN_IF_ERROR(impl.CopyIn(impl.positions, r.positions, selected));
    RETURN_IF_ERROR(impl.Record(Impl::kStart, timed));
    RETURN_IF_CUDA_ERROR(LaunchGatherRows(keys, values, r.kv_heads, r.num_tokens, r.row_bytes,
                                          impl.positions.as<uint32_t>(), r.k, out, impl.stream));
    return impl.Record(Impl::kCopiedIn, timed);
  };
  RETURN_IF_ERROR(impl.Finish(enqueue()));
  if (timed) *kernel_ms = impl.Elapsed(Impl::kStart, Impl::kCopiedIn);
  return absl::OkStatus();
}

}  // namespace pqkv::kernels::cuda

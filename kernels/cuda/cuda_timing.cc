// cuda_timing: device time of the CUDA layer retrieval (CudaLayerRetriever::RetrieveLayer)
// and of the K/V gather, as a table. Run by kernels/cuda/device_check.sh.
//
//   bazel run //kernels/cuda:cuda_timing -- [flags]
//
// Flags (defaults: one decode step of a Llama-3-8B-like layer at 128K context):
//   --tokens=131072      tokens in the layer (n)
//   --kv_heads=8         H
//   --query_heads=32     H * G
//   --head_dim=128       d
//   --k=4096             positions selected per kv head
//   --shapes=2x6,4x8     PQ shapes to time, M x bits
//   --row_bytes=256      bytes of one gathered K or V row (d = 128 fp16)
//   --iterations=20      timed runs per row (after 3 warm-up runs); medians are printed
//   --device=0           CUDA device
//   --commit=unknown     source revision, echoed in the Setup block
//
// Every retrieval row: median device time (cudaEvent) of each phase of one call (host
// to device copy of queries, codebooks and codes; step 1; steps 2-3; step 4; copy of
// the positions and scores back), their sum, and the median wall time of the whole call.
// Rows "grouped" and "joined" (M = 2) time the two ADC scan kernels (scan_mode.h) that
// the "bits" row chooses between.
// Rows "+1/call" time calls on n, n+1, n+2, ... tokens with the codebooks and codes kept
// on the device (ResidentLayer), as the server's decode steps run: copy_in is then the
// queries and one new token's codes, and the buffers grow as the layer does.
// Gather rows: median kernel time packing H * k K rows and H * k V rows from device
// memory into pinned host memory, or into device memory, and the bandwidth.
// Build rows: one kv head's index build (PqCodebook::Train, the server's defaults, on
// --build_tokens random keys of head_dim dims) with k-means assigning on this CPU and on
// the device (GpuScorer's assigner, as the server's builds do with the CUDA backend):
// median wall time of 3 builds each after one warm-up, their ratio, and whether the two
// codebooks are the same bits (they should be on an AVX2 CPU).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/pq_retrieval_cuda.h"
#include "kernels/cuda/scan_mode.h"
#include "server/index/gpu_scorer.h"
#include "server/index/pq_codebook.h"

ABSL_FLAG(uint32_t, tokens, 131072, "tokens in the layer");
ABSL_FLAG(int, kv_heads, 8, "kv heads");
ABSL_FLAG(int, query_heads, 32, "query heads");
ABSL_FLAG(int, head_dim, 128, "head dimension");
ABSL_FLAG(uint32_t, k, 4096, "positions selected per kv head");
ABSL_FLAG(std::string, shapes, "2x6,4x8", "PQ shapes to time, MxBITS, comma-separated");
ABSL_FLAG(size_t, row_bytes, 256, "bytes of one gathered K or V row");
ABSL_FLAG(int, iterations, 20, "timed runs per row");
ABSL_FLAG(int, device, 0, "CUDA device");
ABSL_FLAG(uint32_t, build_tokens, 32768, "keys of the timed index builds (0: none)");
ABSL_FLAG(std::string, commit, "unknown", "source revision for the Setup block");

namespace pqkv::kernels::cuda {
namespace {

constexpr int kWarmup = 3;

float Median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0f : v[v.size() / 2];
}

// Device memory, freed on scope exit.
struct DeviceMemory {
  void* data = nullptr;
  ~DeviceMemory() { cudaFree(data); }
};

// Pinned host memory, freed on scope exit.
struct PinnedMemory {
  void* data = nullptr;
  ~PinnedMemory() { cudaFreeHost(data); }
};

absl::Status PrintSetup(int device) {
  cudaDeviceProp prop;
  RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, device));
  int runtime = 0, driver = 0;
  RETURN_IF_CUDA_ERROR(cudaRuntimeGetVersion(&runtime));
  RETURN_IF_CUDA_ERROR(cudaDriverGetVersion(&driver));
  std::printf("Setup\n");
  std::printf("  commit:   %s\n", absl::GetFlag(FLAGS_commit).c_str());
  std::printf("  device:   %d: %s, sm_%d%d, %d SMs, %.1f GiB\n", device, prop.name, prop.major,
              prop.minor, prop.multiProcessorCount,
              static_cast<double>(prop.totalGlobalMem) / (1ull << 30));
  std::printf("  CUDA:     runtime %d.%d (static), driver %d.%d\n", runtime / 1000,
              (runtime % 1000) / 10, driver / 1000, (driver % 1000) / 10);
  std::printf("  layer:    n = %u tokens, H = %d kv heads, %d query heads, d = %d, k = %u\n",
              absl::GetFlag(FLAGS_tokens), absl::GetFlag(FLAGS_kv_heads),
              absl::GetFlag(FLAGS_query_heads), absl::GetFlag(FLAGS_head_dim),
              absl::GetFlag(FLAGS_k));
  std::printf("  timing:   median of %d runs after %d warm-up runs, milliseconds\n\n",
              absl::GetFlag(FLAGS_iterations), kWarmup);
  return absl::OkStatus();
}

// Times RetrieveLayer for PQ shape M x bits with the ADC scan `mode`; leaves the last
// selection in `positions`. growing: call i runs on n + i tokens instead of n.
absl::Status TimeRetrieval(CudaLayerRetriever& retriever, int M, int bits, bool growing,
                           ScanMode mode, std::vector<uint32_t>& positions) {
  const int H = absl::GetFlag(FLAGS_kv_heads);
  const int Q = absl::GetFlag(FLAGS_query_heads);
  const int d = absl::GetFlag(FLAGS_head_dim);
  const uint32_t n = absl::GetFlag(FLAGS_tokens);
  const uint32_t k = absl::GetFlag(FLAGS_k);
  const int iterations = absl::GetFlag(FLAGS_iterations);
  const uint32_t max_n = growing ? n + kWarmup + iterations : n;
  if (M < 1 || d % M != 0 || bits < 1 || bits > 8) {
    return absl::InvalidArgumentError("bad PQ shape in --shapes");
  }
  const int ksub = 1 << bits;
  std::mt19937 rng(M * 16 + bits);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> code(0, ksub - 1);
  std::vector<float> queries(static_cast<size_t>(Q) * d);
  std::vector<float> centroids(static_cast<size_t>(H) * ksub * d);
  std::vector<uint8_t> codes(static_cast<size_t>(H) * max_n * M);
  for (float& v : queries) v = normal(rng);
  for (float& v : centroids) v = normal(rng);
  for (uint8_t& v : codes) v = static_cast<uint8_t>(code(rng));

  LayerRetrievalInput in;
  in.shape.kv_heads = H;
  in.shape.query_heads = Q;
  in.shape.pq = PqShape{M, ksub, d / M};
  in.queries = queries.data();
  in.centroids = centroids.data();
  in.codes = codes.data();
  in.num_tokens = n;
  // PQCache's defaults: 32 sink tokens and a 64-token recent window are not candidates.
  in.candidate_begin = std::min<uint32_t>(32, n);
  in.candidate_end = std::max(in.candidate_begin, n > 64 ? n - 64 : n);
  in.k = std::min(k, in.candidate_end - in.candidate_begin);
  positions.assign(static_cast<size_t>(H) * in.k, 0);
  std::vector<float> scores(positions.size());
  LayerRetrievalOutput out;
  out.positions = positions.data();
  out.scores = scores.data();

  // Growing: the codes stay on the device; head h's tokens are codes[h][0 .. n + i).
  ResidentLayer resident(retriever.device(), H, in.shape.pq);
  std::vector<const float*> head_centroids(H);
  std::vector<const uint8_t*> head_codes(H);
  for (int h = 0; h < H; ++h) {
    head_centroids[h] = centroids.data() + static_cast<size_t>(h) * ksub * d;
    head_codes[h] = codes.data() + static_cast<size_t>(h) * max_n * M;
  }
  if (growing) {
    in.resident = &resident;
    in.head_centroids = head_centroids.data();
    in.head_codes = head_codes.data();
  }
  retriever.set_scan_mode(mode);
  std::vector<float> copy_in, table, scan, top_k, copy_out, kernels, total, wall;
  for (int i = 0; i < kWarmup + iterations; ++i) {
    if (growing) {
      in.num_tokens = n + i;
      in.candidate_end = std::max(in.candidate_begin, in.num_tokens > 64 ? in.num_tokens - 64 : 0);
    }
    LayerTimings t;
    const auto start = std::chrono::steady_clock::now();
    const absl::Status status = retriever.RetrieveLayer(in, out, &t);
    const auto stop = std::chrono::steady_clock::now();
    if (!status.ok()) retriever.set_scan_mode(ScanMode::kAuto);
    RETURN_IF_ERROR(status);
    if (i < kWarmup) continue;
    copy_in.push_back(t.copy_in_ms);
    table.push_back(t.table_ms);
    scan.push_back(t.scan_softmax_ms);
    top_k.push_back(t.top_k_ms);
    copy_out.push_back(t.copy_out_ms);
    kernels.push_back(t.kernels_ms());
    total.push_back(t.total_ms());
    wall.push_back(std::chrono::duration<float, std::milli>(stop - start).count());
  }
  retriever.set_scan_mode(ScanMode::kAuto);
  std::string label = std::to_string(M) + " x " + std::to_string(bits);
  if (growing) {
    label += " +1/call";
  } else {
    label += mode == ScanMode::kAuto ? " bits" : std::string(" ") + ScanModeName(mode);
  }
  std::printf("%-14s %8.3f %8.3f %10.3f %8.3f %9.3f %9.3f %8.3f %8.3f\n", label.c_str(),
              Median(copy_in), Median(table), Median(scan), Median(top_k), Median(copy_out),
              Median(kernels), Median(total), Median(wall));
  return absl::OkStatus();
}

// Times the gather of the H * k selected K and V rows from device memory into `out`.
absl::Status TimeGather(CudaLayerRetriever& retriever, const std::vector<uint32_t>& positions,
                        const void* keys, const void* values, void* out, const char* label) {
  GatherRequest request;
  request.kv_heads = absl::GetFlag(FLAGS_kv_heads);
  request.num_tokens = absl::GetFlag(FLAGS_tokens);
  request.row_bytes = absl::GetFlag(FLAGS_row_bytes);
  request.keys = keys;
  request.values = values;
  request.positions = positions.data();
  request.k = static_cast<uint32_t>(positions.size() / request.kv_heads);
  request.out = out;
  std::vector<float> ms;
  const int iterations = absl::GetFlag(FLAGS_iterations);
  for (int i = 0; i < kWarmup + iterations; ++i) {
    float kernel_ms = 0;
    const absl::Status status = retriever.Gather(request, &kernel_ms);
    if (!status.ok()) return status;
    if (i >= kWarmup) ms.push_back(kernel_ms);
  }
  const double bytes = 2.0 * positions.size() * request.row_bytes;
  const float median = Median(ms);
  std::printf("%-28s %6u rows x 2 x %4zu B = %7.2f MiB  %8.3f ms  %7.1f GB/s\n", label,
              static_cast<unsigned>(positions.size()), request.row_bytes, bytes / (1 << 20), median,
              median > 0 ? bytes / (median * 1e6) : 0.0);
  return absl::OkStatus();
}

// One --shapes entry, "MxBITS".
absl::Status ParseShape(absl::string_view shape, int* M, int* bits) {
  const std::vector<std::string> parts = absl::StrSplit(shape, 'x');
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], M) || !absl::SimpleAtoi(parts[1], bits)) {
    return absl::InvalidArgumentError(std::string("bad --shapes entry: ") + std::string(shape));
  }
  return absl::OkStatus();
}

// One kv head's index build on the CPU and with k-means assigning on the device.
absl::Status TimeBuilds(int device) {
  const uint32_t n = absl::GetFlag(FLAGS_build_tokens);
  if (n == 0) return absl::OkStatus();
  const int d = absl::GetFlag(FLAGS_head_dim);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> keys(static_cast<size_t>(n) * d);
  for (float& v : keys) v = normal(rng);
  ASSIGN_OR_RETURN(std::unique_ptr<server::GpuScorer> scorer, server::GpuScorer::Create(device));
  std::printf("\nIndex build of one kv head, %u keys x %d dims (PqCodebook::Train), wall ms\n", n,
              d);
  std::printf("%-8s %10s %10s %8s %11s %10s\n", "PQ", "cpu", "device", "ratio", "iterations",
              "same bits");
  for (absl::string_view shape : absl::StrSplit(absl::GetFlag(FLAGS_shapes), ',')) {
    int M = 0, bits = 0;
    RETURN_IF_ERROR(ParseShape(shape, &M, &bits));
    std::vector<float> ms[2];
    std::vector<float> centroids[2];
    int iterations = 0;
    for (int run = 0; run < 4; ++run) {
      for (int on_device = 0; on_device < 2; ++on_device) {
        std::unique_ptr<server::NearestCentroidAssigner> assigner;
        server::PqTrainOptions options;
        if (on_device == 1) {
          assigner = scorer->NewKMeansAssigner();
          if (assigner == nullptr) return absl::InternalError("the device refused an assigner");
          options.assigner = assigner.get();
        }
        const auto start = std::chrono::steady_clock::now();
        ASSIGN_OR_RETURN(server::PqCodebook codebook,
                         server::PqCodebook::Train(keys.data(), n, d, M, bits, 10, false, options));
        const float elapsed =
            std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - start)
                .count();
        if (run > 0) ms[on_device].push_back(elapsed);
        centroids[on_device] = codebook.centroids();
        iterations = codebook.iterations_run();
      }
    }
    const float cpu = Median(ms[0]), gpu = Median(ms[1]);
    std::printf("%-8s %10.1f %10.1f %8.2f %11d %10s\n", std::string(shape).c_str(), cpu, gpu,
                gpu > 0 ? cpu / gpu : 0.0, iterations, centroids[0] == centroids[1] ? "yes" : "no");
  }
  if (scorer->state() != server::GpuBackendState::kReady) {
    return absl::InternalError("a device k-means call failed: " + scorer->last_error());
  }
  return absl::OkStatus();
}

absl::Status Run() {
  const int device = absl::GetFlag(FLAGS_device);
  if (!CudaDeviceAvailable()) return absl::UnavailableError("no CUDA device");
  ASSIGN_OR_RETURN(std::unique_ptr<CudaLayerRetriever> retriever_owner,
                   CudaLayerRetriever::Create(device));
  CudaLayerRetriever& retriever = *retriever_owner;
  RETURN_IF_ERROR(PrintSetup(device));

  std::printf("%-14s %8s %8s %10s %8s %9s %9s %8s %8s\n", "PQ shape", "copy_in", "table",
              "scan+smax", "top_k", "copy_out", "kernels", "total", "wall");
  std::vector<uint32_t> positions;
  for (absl::string_view shape : absl::StrSplit(absl::GetFlag(FLAGS_shapes), ',')) {
    int M = 0, bits = 0;
    RETURN_IF_ERROR(ParseShape(shape, &M, &bits));
    RETURN_IF_ERROR(
        TimeRetrieval(retriever, M, bits, /*growing=*/false, ScanMode::kAuto, positions));
    std::vector<uint32_t> unused;
    RETURN_IF_ERROR(TimeRetrieval(retriever, M, bits, /*growing=*/true, ScanMode::kAuto, unused));
    if (M == 2) {  // which scan kAuto should pick: both, side by side
      for (ScanMode mode : {ScanMode::kGrouped, ScanMode::kJoined}) {
        RETURN_IF_ERROR(TimeRetrieval(retriever, M, bits, /*growing=*/false, mode, unused));
      }
    }
  }
  RETURN_IF_ERROR(TimeBuilds(device));
  if (positions.empty()) return absl::OkStatus();

  // K and V of the whole layer in device memory (contents do not matter for timing).
  const size_t tensor_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_kv_heads)) *
                              absl::GetFlag(FLAGS_tokens) * absl::GetFlag(FLAGS_row_bytes);
  const size_t out_bytes = 2 * positions.size() * absl::GetFlag(FLAGS_row_bytes);
  DeviceMemory keys, values, device_out;
  PinnedMemory pinned_out;
  RETURN_IF_CUDA_ERROR(cudaSetDevice(device));
  RETURN_IF_CUDA_ERROR(cudaMalloc(&keys.data, tensor_bytes));
  RETURN_IF_CUDA_ERROR(cudaMalloc(&values.data, tensor_bytes));
  RETURN_IF_CUDA_ERROR(cudaMalloc(&device_out.data, out_bytes));
  RETURN_IF_CUDA_ERROR(cudaHostAlloc(&pinned_out.data, out_bytes, cudaHostAllocDefault));
  RETURN_IF_CUDA_ERROR(cudaMemset(keys.data, 1, tensor_bytes));
  RETURN_IF_CUDA_ERROR(cudaMemset(values.data, 2, tensor_bytes));
  RETURN_IF_CUDA_ERROR(cudaDeviceSynchronize());
  std::printf("\nGather of the last selection (kernel time, positions copied in before)\n");
  RETURN_IF_ERROR(TimeGather(retriever, positions, keys.data, values.data, pinned_out.data,
                             "device -> pinned host"));
  return TimeGather(retriever, positions, keys.data, values.data, device_out.data,
                    "device -> device");
}

}  // namespace
}  // namespace pqkv::kernels::cuda

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = pqkv::kernels::cuda::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "cuda_timing: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

// Which ADC scan the CUDA retrieval runs (adc_softmax.cu). kAuto is the service's
// choice; the others let the tests cover each kernel and the timing tool compare them.
#ifndef PQKV_KERNELS_CUDA_SCAN_MODE_H_
#define PQKV_KERNELS_CUDA_SCAN_MODE_H_

namespace pqkv::kernels::cuda {

enum class ScanMode {
  kAuto,     // joined for M = 2 once n is large enough to pay for building it, else grouped
  kGrouped,  // per-sub-space tables, each token's codes read once per chunk of query heads
  kJoined,   // M = 2: one table of every code pair (grouped where M != 2 or it does not fit)
};

inline const char* ScanModeName(ScanMode mode) {
  switch (mode) {
    case ScanMode::kAuto:
      return "auto";
    case ScanMode::kGrouped:
      return "grouped";
    case ScanMode::kJoined:
      return "joined";
  }
  return "unknown";
}

}  // namespace pqkv::kernels::cuda

#endif  // PQKV_KERNELS_CUDA_SCAN_MODE_H_

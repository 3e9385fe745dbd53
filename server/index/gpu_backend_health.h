// GpuBackendHealth: what the server remembers about its CUDA backend's failures, so that
// a broken device costs one failed call, not one per layer per request.
//
//  - A device fault, a failed launch or a lost device (any CUDA error but the two below)
//    leaves the CUDA context unusable until the process restarts: the backend is
//    kFailed for good and every later call is answered by the CPU at once.
//  - Out of device memory (RESOURCE_EXHAUSTED) may pass: the backend is kCoolingDown
//    for `cooldown`, the CPU answers meanwhile, then the device is tried again.
//  - INVALID_ARGUMENT (a layer the kernels do not take, e.g. past their size limits)
//    sends that call to the CPU and changes nothing.
// Failures are logged at most once per `log_interval` (the first at once), each line
// saying how many calls the CPU answered since the last one.
//
// Thread-safe (one mutex); the clock is the caller's `now`.
#ifndef PQKV_SERVER_INDEX_GPU_BACKEND_HEALTH_H_
#define PQKV_SERVER_INDEX_GPU_BACKEND_HEALTH_H_

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace pqkv::server {

// Exported as the metric pqkv_gpu_backend_state (the enum's value).
enum class GpuBackendState {
  kReady = 0,        // calls go to the device
  kCoolingDown = 1,  // out of device memory lately: the CPU answers until the cooldown ends
  kFailed = 2,       // a persistent CUDA error: the CPU answers until the server restarts
};

const char* GpuBackendStateName(GpuBackendState state);

class GpuBackendHealth {
 public:
  explicit GpuBackendHealth(absl::Duration cooldown = absl::Seconds(30),
                            absl::Duration log_interval = absl::Seconds(60));

  // Whether a call at `now` may use the device; when not, counts it as answered by the
  // CPU. Leaves kCoolingDown once the cooldown has passed.
  bool TryDevice(absl::Time now);

  // Records a failed device call (the call falls back to the CPU). Returns the line to
  // log, or "" when the log is rate-limited.
  std::string RecordFailure(const absl::Status& status, absl::Time now);

  GpuBackendState state() const;
  // The error that put the backend in its state ("" while kReady).
  std::string last_error() const;
  // Calls answered by the CPU instead of the device: failed ones and refused ones.
  uint64_t cpu_fallbacks() const;

 private:
  const absl::Duration cooldown_;
  const absl::Duration log_interval_;
  mutable absl::Mutex mu_;
  GpuBackendState state_ ABSL_GUARDED_BY(mu_) = GpuBackendState::kReady;
  absl::Time retry_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  uint64_t cpu_fallbacks_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_log_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t fallbacks_at_last_log_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_INDEX_GPU_BACKEND_HEALTH_H_

#include "server/index/gpu_backend_health.h"

#include "absl/strings/str_cat.h"

namespace pqkv::server {

const char* GpuBackendStateName(GpuBackendState state) {
  switch (state) {
    case GpuBackendState::kReady:
      return "ready";
    case GpuBackendState::kCoolingDown:
      return "cooling down";
    case GpuBackendState::kFailed:
      return "failed";
  }
  return "unknown";
}

GpuBackendHealth::GpuBackendHealth(absl::Duration cooldown, absl::Duration log_interval)
    : cooldown_(cooldown), log_interval_(log_interval) {}

bool GpuBackendHealth::TryDevice(absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (state_ == GpuBackendState::kCoolingDown && now >= retry_at_) {
    state_ = GpuBackendState::kReady;
    last_error_.clear();
  }
  if (state_ == GpuBackendState::kReady) return true;
  ++cpu_fallbacks_;
  return false;
}

std::string GpuBackendHealth::RecordFailure(const absl::Status& status, absl::Time now) {
  absl::MutexLock lock(&mu_);
  ++cpu_fallbacks_;
  const GpuBackendState before = state_;
  std::string effect;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      effect = "this call is answered by the CPU";
      break;
    case absl::StatusCode::kResourceExhausted:
      if (state_ != GpuBackendState::kFailed) {
        state_ = GpuBackendState::kCoolingDown;
        retry_at_ = now + cooldown_;
        last_error_ = status.ToString();
      }
      effect = absl::StrCat("the CPU answers for ", absl::FormatDuration(cooldown_),
                            ", then the device is tried again");
      break;
    default:
      state_ = GpuBackendState::kFailed;
      last_error_ = status.ToString();
      effect = "the CPU answers every call until the server restarts";
      break;
  }
  // A change of state is always logged; otherwise at most once per log_interval.
  if (state_ == before && now - last_log_ < log_interval_) return "";
  const uint64_t since = cpu_fallbacks_ - fallbacks_at_last_log_ - 1;
  last_log_ = now;
  fallbacks_at_last_log_ = cpu_fallbacks_;
  return absl::StrCat("GPU retrieval failed: ", status.ToString(), "; backend ",
                      GpuBackendStateName(state_), ": ", effect, " (", since,
                      " other calls answered by the CPU since the last such line, ", cpu_fallbacks_,
                      " in all)");
}

GpuBackendState GpuBackendHealth::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

std::string GpuBackendHealth::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

uint64_t GpuBackendHealth::cpu_fallbacks() const {
  absl::MutexLock lock(&mu_);
  return cpu_fallbacks_;
}

}  // namespace pqkv::server

#include "server/index/gpu_backend_health.h"

#include <string>

#include "catch2/catch.hpp"

namespace pqkv::server {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1000000);

TEST_CASE("A persistent CUDA error sends every later call to the CPU at once", "[server]") {
  GpuBackendHealth health(absl::Seconds(30), absl::Seconds(60));
  REQUIRE(health.TryDevice(kStart));
  const std::string line =
      health.RecordFailure(absl::InternalError("cudaErrorIllegalAddress"), kStart);
  CHECK(line.find("cudaErrorIllegalAddress") != std::string::npos);
  CHECK(line.find("until the server restarts") != std::string::npos);
  CHECK(health.state() == GpuBackendState::kFailed);
  CHECK(health.last_error().find("cudaErrorIllegalAddress") != std::string::npos);
  // An hour later the device is still not tried; every call counts as a CPU fallback.
  for (int i = 1; i <= 100; ++i) CHECK_FALSE(health.TryDevice(kStart + absl::Minutes(i)));
  CHECK(health.cpu_fallbacks() == 101);
  CHECK(health.state() == GpuBackendState::kFailed);
}

TEST_CASE("Out of device memory cools down, then the device is tried again", "[server]") {
  GpuBackendHealth health(absl::Seconds(30), absl::Seconds(60));
  REQUIRE(health.TryDevice(kStart));
  CHECK(health.RecordFailure(absl::ResourceExhaustedError("cudaMalloc"), kStart) != "");
  CHECK(health.state() == GpuBackendState::kCoolingDown);
  CHECK_FALSE(health.TryDevice(kStart + absl::Seconds(29)));
  CHECK(health.TryDevice(kStart + absl::Seconds(30)));
  CHECK(health.state() == GpuBackendState::kReady);
  CHECK(health.last_error().empty());
  CHECK(health.cpu_fallbacks() == 2);

  SECTION("a device fault during the cooldown still fails it for good") {
    CHECK(health.RecordFailure(absl::ResourceExhaustedError("cudaMalloc"), kStart) != "");
    CHECK(health.RecordFailure(absl::InternalError("cudaErrorLaunchFailure"), kStart) != "");
    CHECK(health.state() == GpuBackendState::kFailed);
    CHECK_FALSE(health.TryDevice(kStart + absl::Hours(1)));
  }
  SECTION("out of memory after a failure leaves it failed") {
    health.RecordFailure(absl::InternalError("cudaErrorLaunchFailure"), kStart);
    health.RecordFailure(absl::ResourceExhaustedError("cudaMalloc"), kStart);
    CHECK(health.state() == GpuBackendState::kFailed);
    CHECK_FALSE(health.TryDevice(kStart + absl::Hours(1)));
  }
}

TEST_CASE("A layer the kernels refuse goes to the CPU alone, the state unchanged", "[server]") {
  GpuBackendHealth health(absl::Seconds(30), absl::Seconds(60));
  health.RecordFailure(absl::InvalidArgumentError("query_heads > 65535"), kStart);
  CHECK(health.state() == GpuBackendState::kReady);
  CHECK(health.TryDevice(kStart));
  CHECK(health.cpu_fallbacks() == 1);
}

TEST_CASE("Failures are logged at most once a minute unless the state changes", "[server]") {
  GpuBackendHealth health(absl::Seconds(1), absl::Seconds(60));
  const absl::Status bad = absl::InvalidArgumentError("too large");
  CHECK(health.RecordFailure(bad, kStart) != "");  // the first at once
  int logged = 0;
  for (int i = 1; i < 600; ++i) {  // ten minutes, one failure a second
    if (!health.RecordFailure(bad, kStart + absl::Seconds(i)).empty()) ++logged;
  }
  CHECK(logged == 9);
  const std::string line = health.RecordFailure(bad, kStart + absl::Seconds(660));
  CHECK(line.find("59 other calls") != std::string::npos);
  // A change of state is logged even within the interval.
  CHECK(health.RecordFailure(absl::ResourceExhaustedError("oom"), kStart + absl::Seconds(661)) !=
        "");
  CHECK(health.RecordFailure(absl::InternalError("fault"), kStart + absl::Seconds(662)) != "");
  CHECK(health.RecordFailure(absl::InternalError("fault"), kStart + absl::Seconds(663)) == "");
}

}  // namespace
}  // namespace pqkv::server

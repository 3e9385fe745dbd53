// The server's named spdlog logger ("server"). main() installs it with an asynchronous
// sink; tests and tools that never call InstallServerLogger get a synchronous stderr one.
#ifndef PQKV_SERVER_RUNTIME_SERVER_LOGGER_H_
#define PQKV_SERVER_RUNTIME_SERVER_LOGGER_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "spdlog/spdlog.h"

namespace pqkv::server {

// Long work (an upload stream, a layer's index build) logs its progress this often.
inline constexpr absl::Duration kProgressLogInterval = absl::Seconds(5);

// The "server" logger, created on first use if nobody installed one. Thread-safe.
spdlog::logger& ServerLogger();

// Installs the "server" logger with an asynchronous stderr sink at `level` ("trace",
// "debug", "info", "warn", "error", "critical", "off"). Call once, before the server
// starts. INVALID_ARGUMENT for an unknown level.
absl::Status InstallServerLogger(const std::string& level);

}  // namespace pqkv::server

#endif  // PQKV_SERVER_RUNTIME_SERVER_LOGGER_H_

// The server's named spdlog logger ("server"). main() installs it with an asynchronous
// sink; tests and tools that never call InstallServerLogger get a synchronous stderr one.
#ifndef PQKV_SERVER_SERVER_LOGGER_H_
#define PQKV_SERVER_SERVER_LOGGER_H_

#include <string>

#include "spdlog/spdlog.h"

namespace pqkv {

// The "server" logger, created on first use if nobody installed one. Thread-safe.
spdlog::logger& ServerLogger();

// Installs the "server" logger with an asynchronous stderr sink at `level` ("trace",
// "debug", "info", "warn", "error"). Call once, before the server starts.
void InstallServerLogger(const std::string& level);

}  // namespace pqkv

#endif  // PQKV_SERVER_SERVER_LOGGER_H_

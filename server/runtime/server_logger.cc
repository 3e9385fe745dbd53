#include "server/runtime/server_logger.h"

#include "spdlog/async.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace pqkv::server {

spdlog::logger& ServerLogger() {
  static spdlog::logger* const logger = [] {
    std::shared_ptr<spdlog::logger> existing = spdlog::get("server");
    if (existing) return existing.get();
    return spdlog::stderr_color_mt("server").get();
  }();
  return *logger;
}

absl::Status InstallServerLogger(const std::string& level) {
  // spdlog maps any unknown name to "off"; a typo must not silence the server.
  const spdlog::level::level_enum parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError("unknown --log_level \"" + level +
                                      "\"; use trace, debug, info, warn, error, critical or off");
  }
  spdlog::init_thread_pool(8192, 1);
  auto logger = spdlog::stderr_color_mt<spdlog::async_factory>("server");
  logger->set_level(parsed);
  logger->flush_on(spdlog::level::warn);
  return absl::OkStatus();
}

}  // namespace pqkv::server

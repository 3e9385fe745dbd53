#include "server/server_logger.h"

#include "spdlog/async.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace pqkv {

spdlog::logger& ServerLogger() {
  static spdlog::logger* const logger = [] {
    std::shared_ptr<spdlog::logger> existing = spdlog::get("server");
    if (existing) return existing.get();
    return spdlog::stderr_color_mt("server").get();
  }();
  return *logger;
}

void InstallServerLogger(const std::string& level) {
  spdlog::init_thread_pool(8192, 1);
  auto logger = spdlog::stderr_color_mt<spdlog::async_factory>("server");
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::warn);
}

}  // namespace pqkv

#include "server/metrics/metrics_http_server.h"

#include <httplib.h>

#include <atomic>
#include <memory>

#include "absl/strings/str_cat.h"

namespace pqkv::server {

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& host, int port, const Metrics* metrics, const SessionStore* store) {
  auto http = std::make_unique<httplib::Server>();
  http->Get("/metrics", [metrics, store](const httplib::Request&, httplib::Response& response) {
    response.set_content(metrics->Render(*store), "text/plain; version=0.0.4");
  });
  const int bound =
      port == 0 ? http->bind_to_any_port(host) : (http->bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for /metrics on ", host, ":", port));
  }
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer(std::move(http), bound));
  auto listening_done = std::make_shared<std::atomic<bool>>(false);
  server->thread_ = std::thread([raw = server->http_.get(), listening_done] {
    raw->listen_after_bind();
    listening_done->store(true);
  });
  // httplib's stop() is a no-op until the listener runs; a Stop() before that would
  // leave join() waiting forever, so wait for it here.
  while (!server->http_->is_running() && !listening_done->load()) std::this_thread::yield();
  return server;
}

MetricsHttpServer::MetricsHttpServer(std::unique_ptr<httplib::Server> http, int port)
    : http_(std::move(http)), port_(port) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

void MetricsHttpServer::Stop() {
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace pqkv::server

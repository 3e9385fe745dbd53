// MetricsHttpServer: serves GET /metrics (Prometheus text format) on its own port and
// thread, with cpp-httplib.
//
// Thread-safe; Stop (or the destructor) ends the listener and joins its thread.
#ifndef PQKV_SERVER_METRICS_METRICS_HTTP_SERVER_H_
#define PQKV_SERVER_METRICS_METRICS_HTTP_SERVER_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/metrics/metrics.h"
#include "server/store/session_store.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace pqkv::server {

class MetricsHttpServer {
 public:
  // Listens on host:port (port 0: any free one). metrics and store must outlive it.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& host, int port,
                                                                  const Metrics* metrics,
                                                                  const SessionStore* store);
  ~MetricsHttpServer();
  int port() const { return port_; }
  void Stop();

 private:
  MetricsHttpServer(std::unique_ptr<httplib::Server> http, int port);
  std::unique_ptr<httplib::Server> http_;
  int port_;
  std::thread thread_;
};

}  // namespace pqkv::server

#endif  // PQKV_SERVER_METRICS_METRICS_HTTP_SERVER_H_

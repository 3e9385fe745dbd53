// ServerProcess: starts the real pqkv-server binary on a free loopback port for an
// integration test and stops it (SIGTERM) on destruction.
#ifndef PQKV_TESTS_TESTING_SERVER_PROCESS_H_
#define PQKV_TESTS_TESTING_SERVER_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pqkv::testing {

class ServerProcess {
 public:
  // Starts `binary` with --port=0 plus `extra_args`, and waits until it reports its port.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& binary, const std::vector<std::string>& extra_args = {});
  ~ServerProcess();

  // "127.0.0.1:<port>".
  std::string address() const;
  int port() const { return port_; }
  // Port of the server's /metrics endpoint.
  int metrics_port() const { return metrics_port_; }
  // The server's process id (e.g. to read its memory from /proc/<pid>/status).
  pid_t pid() const { return pid_; }
  // Sends SIGTERM and waits; returns the exit status (as from waitpid).
  int Stop();

 private:
  ServerProcess(pid_t pid, int port, int metrics_port)
      : pid_(pid), port_(port), metrics_port_(metrics_port) {}
  pid_t pid_;
  int port_;
  int metrics_port_;
  bool stopped_ = false;
  int exit_status_ = 0;
};

}  // namespace pqkv::testing

#endif  // PQKV_TESTS_TESTING_SERVER_PROCESS_H_

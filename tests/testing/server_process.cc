#include "tests/testing/server_process.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace pqkv::testing {

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::string& binary, const std::vector<std::string>& extra_args) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  static int counter = 0;
  const std::string port_file =
      absl::StrCat(tmp ? tmp : "/tmp", "/pqkv-port-", getpid(), "-", counter++);
  const std::string metrics_port_file = port_file + "-metrics";
  std::vector<std::string> args = {binary,
                                   "--host=127.0.0.1",
                                   "--port=0",
                                   "--port_file=" + port_file,
                                   "--metrics_port=0",
                                   "--metrics_port_file=" + metrics_port_file};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  // The server writes the port file atomically once it listens.
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (absl::Now() < give_up) {
    int port = 0, metrics_port = 0;
    // The metrics port is written first, so both are there once the gRPC one is.
    if (std::ifstream(port_file) >> port && port > 0 &&
        std::ifstream(metrics_port_file) >> metrics_port) {
      return std::unique_ptr<ServerProcess>(new ServerProcess(pid, port, metrics_port));
    }
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return absl::InternalError(absl::StrCat(binary, " exited with status ", status));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return absl::DeadlineExceededError(absl::StrCat(binary, " did not report a port in 30 s"));
}

ServerProcess::~ServerProcess() { Stop(); }

std::string ServerProcess::address() const { return absl::StrCat("127.0.0.1:", port_); }

int ServerProcess::Stop() {
  if (!stopped_) {
    stopped_ = true;
    kill(pid_, SIGTERM);
    waitpid(pid_, &exit_status_, 0);
  }
  return exit_status_;
}

}  // namespace pqkv::testing

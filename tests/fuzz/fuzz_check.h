// FUZZ_CHECK: a property a fuzz target asserts about the server's answer. A failure prints
// what failed and aborts, which libFuzzer reports as a crash and saves the input (and the
// replay build, tests/fuzz/replay_main.cc, fails its corpus test). Active in every build.
#ifndef PQKV_TESTS_FUZZ_FUZZ_CHECK_H_
#define PQKV_TESTS_FUZZ_FUZZ_CHECK_H_

#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#define FUZZ_CHECK(condition, ...)                                                            \
  do {                                                                                        \
    if (!(condition)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed: ", __FILE__, __LINE__, #condition); \
      std::fprintf(stderr, __VA_ARGS__);                                                      \
      std::fprintf(stderr, "\n");                                                             \
      std::abort();                                                                           \
    }                                                                                         \
  } while (0)

namespace pqkv::fuzz {

// Aborts unless `status` has one of `allowed` codes: bad input must get an answer that
// says so, never INTERNAL, UNKNOWN or a hang (DEADLINE_EXCEEDED).
inline void CheckStatusIn(const char* call, const grpc::Status& status,
                          std::initializer_list<grpc::StatusCode> allowed) {
  for (grpc::StatusCode code : allowed) {
    if (status.error_code() == code) return;
  }
  FUZZ_CHECK(false, "%s ended with code %d: %s", call, static_cast<int>(status.error_code()),
             status.error_message().c_str());
}

}  // namespace pqkv::fuzz

#endif  // PQKV_TESTS_FUZZ_FUZZ_CHECK_H_

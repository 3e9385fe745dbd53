// ProcStatusBytes: a size field of a process's /proc/<pid>/status in bytes (VmRSS: resident
// now; VmHWM: its peak), for tests that check what a server keeps. The test fails
// (REQUIRE) if the field is missing.
#ifndef PQKV_TESTS_TESTING_PROC_STATUS_H_
#define PQKV_TESTS_TESTING_PROC_STATUS_H_

#include <sys/types.h>

#include <cstddef>
#include <string>

namespace pqkv::testing {

size_t ProcStatusBytes(pid_t pid, const std::string& field);

}  // namespace pqkv::testing

#endif  // PQKV_TESTS_TESTING_PROC_STATUS_H_

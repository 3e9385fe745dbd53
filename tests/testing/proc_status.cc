#include "tests/testing/proc_status.h"

#include <cstdint>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "catch2/catch.hpp"

namespace pqkv::testing {

size_t ProcStatusBytes(pid_t pid, const std::string& field) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (!absl::StartsWith(line, field + ":")) continue;
    std::string digits;
    for (char c : line) {
      if (c >= '0' && c <= '9') digits += c;
    }
    uint64_t kib = 0;
    REQUIRE(absl::SimpleAtoi(digits, &kib));
    return kib * 1024;
  }
  FAIL("no " << field << " in /proc/" << pid << "/status");
  return 0;
}

}  // namespace pqkv::testing

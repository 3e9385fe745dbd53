#include "bench/bench_setup.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>

#include "absl/strings/str_format.h"

namespace pqkv::bench {

std::string Commit() {
  const char* dir = std::getenv("BUILD_WORKSPACE_DIRECTORY");
  std::string cmd =
      absl::StrFormat("git -C '%s' rev-parse --short HEAD 2>/dev/null", dir ? dir : ".");
  FILE* pipe = popen(cmd.c_str(), "r");
  char buf[64] = {0};
  if (pipe) {
    if (fgets(buf, sizeof buf, pipe) == nullptr) buf[0] = 0;
    pclose(pipe);
  }
  std::string s(buf);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s.empty() ? "unknown" : s;
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

void EvictCaches() {
  // Twice the last-level cache this CPU reports, and at least 128 MiB (4x the 32 MiB L3
  // of the AMD machine; the Intel Xeon's is 260 MiB, and a 128 MiB sweep left much of a
  // run's data in it).
  static const size_t bytes = [] {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return std::max(size_t{128} << 20, l3 > 0 ? 2 * static_cast<size_t>(l3) : 0);
  }();
  static std::vector<uint64_t> buffer(bytes / sizeof(uint64_t));
  static uint64_t round = 0;
  ++round;
  uint64_t sum = 0;
  for (uint64_t& word : buffer) {
    word += round;
    sum += word;
  }
  static volatile uint64_t sink;
  sink = sum;
}

uint64_t ReadRowLines(const void* const* rows, size_t n, size_t row_bytes) {
  constexpr size_t kAhead = 16;
  uint64_t sum = 0;
  for (size_t i = 0; i < n; ++i) {
    if (i + kAhead < n) {
      for (size_t b = 0; b < row_bytes; b += 64) {
        __builtin_prefetch(static_cast<const char*>(rows[i + kAhead]) + b, 0, 1);
      }
    }
    for (size_t b = 0; b < row_bytes; b += 64) {
      uint64_t word;
      std::memcpy(&word, static_cast<const char*>(rows[i]) + b, sizeof word);
      sum += word;
    }
  }
  return sum;
}

}  // namespace pqkv::bench

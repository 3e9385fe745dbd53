// Catch2 main of the CUDA tests. Where a CUDA device exists it is tests/testing/
// catch_main.cc: under `bazel test` (XML_OUTPUT_FILE set) it writes JUnit XML there and
// echoes it to the log. Where none exists it runs nothing, prints
// "SKIPPED: no CUDA device", writes JUnit XML with one skipped test case "CUDA kernels"
// (scripts/test.sh counts it as skipped) and exits 0.
#define CATCH_CONFIG_RUNNER
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "catch2/catch.hpp"
#include "kernels/cuda/pq_retrieval_cuda.h"

namespace {

std::string XmlEscape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// JUnit XML of a test binary whose one test case, "CUDA kernels", was skipped.
std::string SkippedXml(const std::string& suite) {
  const std::string name = XmlEscape(suite);
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
         "<testsuites>\n"
         "  <testsuite name=\"" +
         name +
         "\" errors=\"0\" failures=\"0\" skipped=\"1\" tests=\"1\">\n"
         "    <testcase classname=\"" +
         name +
         "\" name=\"CUDA kernels\" time=\"0\">\n"
         "      <skipped message=\"no CUDA device\"/>\n"
         "    </testcase>\n"
         "  </testsuite>\n"
         "</testsuites>\n";
}

}  // namespace

int main(int argc, char** argv) {
  const char* xml = std::getenv("XML_OUTPUT_FILE");
  if (!pqkv::kernels::cuda::CudaDeviceAvailable()) {
    std::cout << "SKIPPED: no CUDA device" << std::endl;
    if (xml != nullptr) {
      const char* target = std::getenv("TEST_TARGET");
      std::ofstream(xml) << SkippedXml(target != nullptr ? target : argv[0]);
    }
    return 0;
  }
  std::vector<const char*> args(argv, argv + argc);
  if (xml != nullptr) {
    args.insert(args.end(), {"--reporter", "junit", "--out", xml});
  }
  Catch::Session session;
  const int failures = session.run(static_cast<int>(args.size()), args.data());
  if (xml != nullptr) std::cout << std::ifstream(xml).rdbuf() << std::endl;
  return failures == 0 ? 0 : 1;
}

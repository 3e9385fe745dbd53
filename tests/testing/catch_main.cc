// The one Catch2 main of every test binary. Under `bazel test` (XML_OUTPUT_FILE set) it
// writes JUnit XML there, so .ci/run can count test cases, and echoes it to the log.
#define CATCH_CONFIG_RUNNER
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <vector>

#include "catch2/catch.hpp"

int main(int argc, char** argv) {
  std::vector<const char*> args(argv, argv + argc);
  const char* xml = std::getenv("XML_OUTPUT_FILE");
  if (xml != nullptr) {
    args.insert(args.end(), {"--reporter", "junit", "--out", xml});
  }
  Catch::Session session;
  const int failures = session.run(static_cast<int>(args.size()), args.data());
  if (xml != nullptr) std::cout << std::ifstream(xml).rdbuf() << std::endl;
  return failures == 0 ? 0 : 1;
}

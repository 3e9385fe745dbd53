#include "kernels/cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace pqkv::kernels {

bool UseAvx2() {
  static const bool use = [] {
    const char* disable = std::getenv("PQKV_DISABLE_SIMD");
    if (disable != nullptr && std::strcmp(disable, "1") == 0) return false;
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
  }();
  return use;
}

const char* SimdLevelName() { return UseAvx2() ? "avx2" : "portable"; }

}  // namespace pqkv::kernels

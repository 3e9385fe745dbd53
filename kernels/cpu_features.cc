#include "kernels/cpu_features.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace pqkv::kernels {

bool UseAvx2() {
  static const bool use = [] {
    const char* disable = std::getenv("PQKV_DISABLE_SIMD");
    if (disable != nullptr && std::strcmp(disable, "1") == 0) return false;
#if defined(__x86_64__)
    __builtin_cpu_init();
    // F16C (fp16 loads) came before AVX2 on every x86 CPU; checked anyway, with CPUID
    // leaf 1 (clang's __builtin_cpu_supports does not know "f16c").
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
    return false;
#endif
  }();
  return use;
}

bool UseAvx512() {
  static const bool use = [] {
    const char* disable = std::getenv("PQKV_DISABLE_AVX512");
    if (disable != nullptr && std::strcmp(disable, "1") == 0) return false;
#if defined(__x86_64__)
    return UseAvx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
#else
    return false;
#endif
  }();
  return use;
}

bool UseAvx512Vnni() {
  static const bool use = [] {
#if defined(__x86_64__)
    return UseAvx512() && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
  }();
  return use;
}

const char* SimdLevelName() { return UseAvx512() ? "avx512" : UseAvx2() ? "avx2" : "portable"; }

}  // namespace pqkv::kernels

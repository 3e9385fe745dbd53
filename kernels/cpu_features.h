// Which SIMD kernels this CPU can run, detected once at start.
#ifndef PQKV_KERNELS_CPU_FEATURES_H_
#define PQKV_KERNELS_CPU_FEATURES_H_

namespace pqkv::kernels {

// True when the CPU has AVX2 and FMA (the *_avx2.cc kernels). PQKV_DISABLE_SIMD=1 in the
// environment forces the portable kernels, for testing and comparison.
bool UseAvx2();

// True when UseAvx2() is and the CPU also has AVX-512 F and VL (the *_avx512.cc kernels).
// PQKV_DISABLE_AVX512=1 keeps the AVX2 kernels, for comparison.
bool UseAvx512();

// True when UseAvx512() is and the CPU also has AVX-512 BW and VNNI (the *_avx512_vnni.cc
// kernels: vpdpbusd). PQKV_DISABLE_AVX512=1 turns these off too.
bool UseAvx512Vnni();

// "avx512", "avx2" or "portable": what UseAvx2() chose, for logs and benchmark headers.
const char* SimdLevelName();

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_CPU_FEATURES_H_

// Declarations of the AVX-512 VNNI kernels, defined in *_avx512_vnni.cc files compiled
// with -mavx512f -mavx512bw -mavx512vnni. Call them only when UseAvx512Vnni() is true; the
// public headers dispatch.
#ifndef PQKV_KERNELS_SIMD_AVX512_VNNI_H_
#define PQKV_KERNELS_SIMD_AVX512_VNNI_H_

#include <cstddef>
#include <cstdint>

namespace pqkv::kernels::avx512_vnni {

// See Dim4Dots in dim4_scan.h.
void Dim4Dots(const uint8_t* blocks, size_t num_blocks, int head_dim, const int8_t* weights,
              int num_queries, int32_t* out, size_t out_stride);

}  // namespace pqkv::kernels::avx512_vnni

#endif  // PQKV_KERNELS_SIMD_AVX512_VNNI_H_

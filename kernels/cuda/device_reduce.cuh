// Device helpers shared by the retrieval kernels: warp and block reductions, the online
// (max, sum of exponentials) pair of a softmax normaliser, and the order-preserving
// integer key of a float score. Device code: include from .cu files only.
#ifndef PQKV_KERNELS_CUDA_DEVICE_REDUCE_CUH_
#define PQKV_KERNELS_CUDA_DEVICE_REDUCE_CUH_

#include <math_constants.h>

#include <cstdint>

namespace pqkv::kernels::cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Softmax normaliser of a set of values y: max = max(y), sum = sum exp(y - max); the
// empty set is (-inf, 0). Merges (other_max, other_sum) into (max, sum).
__device__ __forceinline__ void CombineMaxSum(float& max, float& sum, float other_max,
                                              float other_sum) {
  if (other_max == -CUDART_INF_F) return;
  if (max == -CUDART_INF_F) {
    max = other_max;
    sum = other_sum;
  } else if (other_max > max) {
    sum = sum * expf(max - other_max) + other_sum;
    max = other_max;
  } else {
    sum += other_sum * expf(other_max - max);
  }
}

__device__ __forceinline__ void WarpReduceMaxSum(float& max, float& sum) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const float other_max = __shfl_xor_sync(kFullMask, max, offset);
    const float other_sum = __shfl_xor_sync(kFullMask, sum, offset);
    CombineMaxSum(max, sum, other_max, other_sum);
  }
}

// Reduces every thread's (max, sum) over the block; the result is valid in thread 0.
// blockDim.x must be a multiple of 32 (at most 1024) and all threads must call it.
__device__ __forceinline__ void BlockReduceMaxSum(float& max, float& sum) {
  __shared__ float warp_max[kWarpSize];
  __shared__ float warp_sum[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  WarpReduceMaxSum(max, sum);
  if (lane == 0) {
    warp_max[warp] = max;
    warp_sum[warp] = sum;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / kWarpSize;
    max = lane < warps ? warp_max[lane] : -CUDART_INF_F;
    sum = lane < warps ? warp_sum[lane] : 0.0f;
    WarpReduceMaxSum(max, sum);
  }
}

struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

template <typename T, typename Op>
__device__ __forceinline__ T WarpAllReduce(T value, Op op) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(kFullMask, value, offset));
  }
  return value;
}

// Reduces `value` over the block with `op` (identity `identity`) and returns the result
// to every thread. Same block requirements as BlockReduceMaxSum; may be called again
// right away (it synchronizes before returning).
template <typename T, typename Op>
__device__ __forceinline__ T BlockAllReduce(T value, Op op, T identity) {
  __shared__ T partial[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  value = WarpAllReduce(value, op);
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  const int warps = blockDim.x / kWarpSize;
  value = WarpAllReduce(lane < warps ? partial[lane] : identity, op);
  __syncthreads();
  return value;
}

// An unsigned key that orders like the float: a > b as floats iff key(a) > key(b), and
// -0.0 and +0.0 get the same key (they compare equal). Not for NaN.
__device__ __forceinline__ uint32_t OrderedKey(float value) {
  const uint32_t bits = __float_as_uint(value == 0.0f ? 0.0f : value);
  return (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
}

}  // namespace pqkv::kernels::cuda

#endif  // PQKV_KERNELS_CUDA_DEVICE_REDUCE_CUH_

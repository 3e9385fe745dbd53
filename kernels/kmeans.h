// Nearest-centroid assignment, the inner loop of the index builder's k-means and of
// encoding (server/index/pq_codebook.h, server/index/kmeans.h).
//
// AssignNearest: for each of n points (fp32, row r at points + r * stride, `dim` floats)
// the index of the nearest of k centroids (fp32 [k][dim], contiguous) by L2, computed as
// argmin_c (||c||^2 - 2 x.c) with c_norms[c] = ||c||^2 given; ties go to the lower index.
// Writes assign[n] and, when distances != nullptr, distances[n] = ||c||^2 - 2 x.c of the
// chosen centroid (the squared distance less ||x||^2).
//
// The SIMD paths compute the dot products as register blocks, 12 points x 32 centroids
// with AVX-512 (kmeans_avx512.cc), 6 x 16 with AVX2 + FMA (kmeans_avx2.cc), centroids
// transposed once per call (the cost is k x dim floats), with the argmin fused behind each
// block; the portable path is the reference. All sum the dot product in dimension order,
// one product at a time, so the two SIMD paths give the same bits; on integer-valued
// inputs (and any input whose partial sums are exact) they agree with the portable path
// bit for bit, otherwise they differ by rounding only (FMA against a multiply then add).
//
// Pure, thread-safe. Requires 1 <= k and dim >= 1.
#ifndef PQKV_KERNELS_KMEANS_H_
#define PQKV_KERNELS_KMEANS_H_

#include <cstddef>
#include <cstdint>

namespace pqkv::kernels {

void AssignNearest(const float* points, size_t n, int dim, size_t stride, const float* centroids,
                   const float* c_norms, int k, uint32_t* assign, float* distances);

// The portable code whatever the CPU: the AVX2 path's test oracle.
void AssignNearestPortable(const float* points, size_t n, int dim, size_t stride,
                           const float* centroids, const float* c_norms, int k, uint32_t* assign,
                           float* distances);

// c_norms[c] = ||centroids[c]||^2 for k centroids of dim floats.
void CentroidNorms(const float* centroids, int k, int dim, float* c_norms);

}  // namespace pqkv::kernels

#endif  // PQKV_KERNELS_KMEANS_H_

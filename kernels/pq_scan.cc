#include "kernels/pq_scan.h"

namespace pqkv::kernels {

void ComputeInnerProductTable(const PqShape& shape, const float* query, const float* centroids,
                              float* table) {
  const int dsub = shape.subspace_dim;
  const int ksub = shape.centroids_per_subspace;
  // Eight centroids at a time, each summed front to back as a plain loop would (so the
  // table is the same to the bit): eight independent add chains instead of one that waits
  // on its own latency, which made the table most of a 2 x 6 retrieval's scoring.
  constexpr int kLanes = 8;
  for (int m = 0; m < shape.subspaces; ++m) {
    const float* q = query + m * dsub;
    const float* sub = centroids + static_cast<size_t>(m) * ksub * dsub;
    int c = 0;
    for (; c + kLanes <= ksub; c += kLanes) {
      float dot[kLanes] = {};
      for (int i = 0; i < dsub; ++i) {
        for (int j = 0; j < kLanes; ++j) dot[j] += q[i] * sub[(c + j) * dsub + i];
      }
      for (int j = 0; j < kLanes; ++j) table[m * ksub + c + j] = dot[j];
    }
    for (; c < ksub; ++c) {
      float dot = 0.0f;
      for (int i = 0; i < dsub; ++i) dot += q[i] * sub[c * dsub + i];
      table[m * ksub + c] = dot;
    }
  }
}

void AdcScan(const PqShape& shape, const float* table, const uint8_t* codes, size_t n, float* out) {
  const int M = shape.subspaces;
  const int ksub = shape.centroids_per_subspace;
  for (size_t t = 0; t < n; ++t) {
    const uint8_t* code = codes + t * M;
    float score = 0.0f;
    for (int m = 0; m < M; ++m) score += table[m * ksub + code[m]];
    out[t] = score;
  }
}

void ExactScores(const float* query, const float* keys, size_t n, int dim, float* out) {
  for (size_t t = 0; t < n; ++t) {
    const float* key = keys + t * dim;
    float dot = 0.0f;
    for (int i = 0; i < dim; ++i) dot += query[i] * key[i];
    out[t] = dot;
  }
}

}  // namespace pqkv::kernels

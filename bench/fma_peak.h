// FmaPeakLoop: this CPU's multiply-add peak, for arithmetic floors. The re-rank's floor in
// issue 17 is its rows' reads plus its 68 MFLOP of dot products; retrieval_bench times
// the reads with a loop that only reads, and the arithmetic with this loop: as many
// multiply-adds as the dot products take, in registers (twelve independent chains, no
// memory), at the widest width the CPU has (AVX-512, AVX2 + FMA, else scalar), on the
// same threads.
#ifndef PQKV_BENCH_FMA_PEAK_H_
#define PQKV_BENCH_FMA_PEAK_H_

#include <cstddef>

namespace pqkv::bench {

// Runs `multiply_adds` (rounded up to a whole number of vector steps) float
// multiply-adds and returns a value that depends on all of them (so that none is
// optimised away).
float FmaPeakLoop(size_t multiply_adds);

// The lanes of the width FmaPeakLoop runs at: 16, 8 or 1.
int FmaPeakLanes();

}  // namespace pqkv::bench

#endif  // PQKV_BENCH_FMA_PEAK_H_

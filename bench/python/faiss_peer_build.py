"""faiss-cpu's PQ build (train + encode) of one layer, for bench/retrieval_bench --build.

Reads fp32 keys [kv_heads][tokens][head_dim] from --keys, builds one faiss.ProductQuantizer
per kv head as pqkv did before its own k-means (niter, seed 1234, min_points_per_centroid 1,
a sample of --max-points-per-centroid points per centroid, FAISS's default 256), --repeats
times, and prints one JSON
line: {"build_ms": median wall time over repeats of the whole layer, "cpu_ms": median CPU
time of the process (all threads), "threads": OpenMP threads,
"version": faiss.__version__}. Writes the last build's centroids (fp32 [kv_head][M][2^bits]
[head_dim / M]) to --centroids and its codes unpacked to one byte each (uint8
[kv_head][tokens][M]) to --codes, for the bench's mass recall.
"""
import argparse
import json
import time

import faiss
import numpy as np


def unpack(packed, m, nbits):
    """FAISS packs codes little-endian, bit-tight: code j is bits [j*nbits, (j+1)*nbits)."""
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : m * nbits]
    bits = bits.reshape(len(packed), m, nbits).astype(np.uint32)
    return (bits << np.arange(nbits, dtype=np.uint32)).sum(axis=2).astype(np.uint8)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--keys", required=True)
    p.add_argument("--kv-heads", type=int, required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--head-dim", type=int, required=True)
    p.add_argument("--subspaces", type=int, required=True)
    p.add_argument("--bits", type=int, required=True)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--max-points-per-centroid", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--centroids", required=True)
    p.add_argument("--codes", required=True)
    a = p.parse_args()
    faiss.omp_set_num_threads(a.threads)
    keys = np.fromfile(a.keys, dtype=np.float32).reshape(a.kv_heads, a.tokens, a.head_dim)
    times, cpu_times = [], []
    for _ in range(a.repeats):
        centroids, codes = [], []
        start, cpu_start = time.perf_counter(), time.process_time()
        for h in range(a.kv_heads):
            x = np.ascontiguousarray(keys[h])
            pq = faiss.ProductQuantizer(a.head_dim, a.subspaces, a.bits)
            pq.cp.niter = a.iterations
            pq.cp.seed = 1234
            pq.cp.min_points_per_centroid = 1
            pq.cp.max_points_per_centroid = a.max_points_per_centroid
            pq.verbose = False
            pq.train(x)
            codes.append(pq.compute_codes(x))
            centroids.append(faiss.vector_to_array(pq.centroids))
        times.append((time.perf_counter() - start) * 1e3)
        cpu_times.append((time.process_time() - cpu_start) * 1e3)
    np.concatenate(centroids).astype(np.float32).tofile(a.centroids)
    np.stack([unpack(c, a.subspaces, a.bits) for c in codes]).tofile(a.codes)
    print(json.dumps({"build_ms": float(np.median(times)),
                      "cpu_ms": float(np.median(cpu_times)), "threads": a.threads,
                      "version": faiss.__version__}))


if __name__ == "__main__":
    main()

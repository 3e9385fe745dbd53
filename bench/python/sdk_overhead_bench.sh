#!/usr/bin/env bash
# Runs sdk_overhead_bench.py with Debian's python3 from the runfiles root (bazel run),
# the SDK from python/, the server and the C++ baseline built beside it. One BLAS thread:
# the bench's "cpu" computation must not take the server's cores by surprise.
set -euo pipefail
export PYTHONPATH="$PWD/python"
export PQKV_SERVER_BINARY="$PWD/server/pqkv-server"
export OPENBLAS_NUM_THREADS=1
exec "${PQKV_PYTHON:-/usr/bin/python3}" bench/python/sdk_overhead_bench.py \
  --cpp_bench="$PWD/bench/sdk_roundtrip_bench" "$@"

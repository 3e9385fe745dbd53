#!/usr/bin/env bash
# Checks the CUDA path on a GPU machine with one command, in under five minutes:
#   1. builds and runs the CUDA kernel tests (every kernel against the plain CPU
#      reference), with their full output;
#   2. prints the timing table of kernels/cuda/cuda_timing.cc (layer retrieval at 131072
#      tokens, 8 kv heads, 32 query heads, d = 128, k = 4096 for PQ 2 x 6 and 4 x 8 bits,
#      median of 20 runs; gather of the selected K/V rows).
# Extra arguments go to cuda_timing (e.g. --tokens=262144). Fails when the tests fail,
# or report themselves skipped: on a GPU machine that means the device is unusable.
#
#   kernels/cuda/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install_deps.sh
test_target=//tests/kernels/cuda:pq_retrieval_cuda_test
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! git diff --quiet HEAD 2>/dev/null; then commit="${commit}+local changes"; fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
else
  echo "device_check: nvidia-smi not found (the tests still look for a device)"
fi

# One build for both targets (same configuration as `bazel test //...`: no rebuild).
bazel build "${test_target}" //kernels/cuda:cuda_timing

echo "== CUDA kernel tests"
bazel test "${test_target}" --test_output=all --cache_test_results=no
test_log=bazel-testlogs/tests/kernels/cuda/pq_retrieval_cuda_test/test.log
if grep -q "SKIPPED: no CUDA device" "${test_log}"; then
  echo "device_check: FAILED: the CUDA tests found no usable CUDA device" >&2
  exit 1
fi

echo "== Timing"
bazel-bin/kernels/cuda/cuda_timing --commit="${commit}" "$@"
echo "device_check: OK"

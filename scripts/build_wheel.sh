#!/usr/bin/env bash
# Builds the Python SDK's wheel into dist/ and prints its path: Bazel builds the native
# extension, python/build_wheel.py packs it with the package's sources. Install it with
#   python3 -m venv --system-site-packages venv && venv/bin/pip install dist/pqkv-*.whl
# (--system-site-packages lets the venv use Debian's numpy; without it pip fetches numpy).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh >/dev/null
bazel build "//python:pqkv/_native.so" 2>&1 | tail -1 >&2
exec /usr/bin/python3 python/build_wheel.py --native bazel-bin/python/pqkv/_native.so --out dist "$@"

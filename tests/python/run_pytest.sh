#!/usr/bin/env bash
# Runs the Python SDK's pytest suite with Debian's python3 (python3-pytest, python3-numpy;
# PQKV_PYTHON overrides) against the server built here. pytest writes JUnit results where
# Bazel reads them, so scripts/test.sh counts every Python test beside the Catch2 ones.
# Runs from the runfiles root, where python/pqkv holds the sources and _native.so.
set -euo pipefail
export PYTHONPATH="$PWD/python"
export PYTHONDONTWRITEBYTECODE=1
export PQKV_SERVER_BINARY="$PWD/server/pqkv-server"
exec "${PQKV_PYTHON:-/usr/bin/python3}" -m pytest -p no:cacheprovider -q tests/python \
  --junitxml="${XML_OUTPUT_FILE:-/dev/null}" "$@"

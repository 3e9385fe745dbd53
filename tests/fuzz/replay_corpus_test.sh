#!/usr/bin/env bash
# Runs a fuzz target once over every file of its checked-in corpus (seeds and kept
# reproducers): tests/fuzz/fuzz.bzl.
#
#   replay_corpus_test.sh FUZZ_TARGET CORPUS_DIR
set -euo pipefail
target=$1
corpus=$2
shopt -s nullglob
inputs=("$corpus"/*)
if [ ${#inputs[@]} -eq 0 ]; then
  echo "no inputs in $corpus" >&2
  exit 1
fi
exec "$target" "${inputs[@]}"

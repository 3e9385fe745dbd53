#!/usr/bin/env bash
# Sets up (Debian packages), builds and runs every test, then prints one line:
# "N passed, N failed", counting test cases from the JUnit results Bazel keeps: Catch2's
# and pytest's (tests/python), one case per other test target
# (scripts/count_test_results.py). Test cases reported skipped (the CUDA tests without a
# GPU, the torch tests without torch) are counted apart, in a line "N skipped (...)" just
# before it.
#
#   scripts/test.sh [--sanitizers] [bazel flags]
#
# --sanitizers (what CI runs): also builds the server, client and integration tests with
# AddressSanitizer and UndefinedBehaviorSanitizer (--config=sanitizers, .bazelrc, in an
# output tree of their own) and runs them; their cases count in the same total. Then it
# runs every libFuzzer target for 60 s (scripts/fuzz.sh; PQKV_FUZZ_SECONDS changes it), each
# target one case in the total.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh || exit 1

sanitizers=0
if [ "${1:-}" = "--sanitizers" ]; then
  sanitizers=1
  shift
fi
flags=()
excluded=()
if [ ! -x /usr/local/cuda/bin/nvcc ]; then
  # No CUDA toolkit: build the CPU backend only and leave the CUDA kernels out.
  echo "test.sh: no /usr/local/cuda/bin/nvcc; building without CUDA (--define=pqkv_cuda=off)"
  flags=(--define=pqkv_cuda=off)
  excluded=(-//kernels/cuda/... -//tests/kernels/cuda/... -//third_party/cuda:cudart
    -//tests/server/store:layer_store_gpu_test)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# run_pass NAME ARGS...: one `bazel test`, its results counted into $work/tally (a
# counter that cannot count counts as one failure).
run_pass() {
  local name=$1
  shift
  bazel test --test_summary=short "$@" 2>&1 | tee "$work/$name.summary"
  python3 scripts/count_test_results.py "$name" "${PIPESTATUS[0]}" "$work/$name.summary" \
    "$work/tally" || echo '{"passed": 0, "failed": 1, "skipped": []}' >>"$work/tally"
}

run_pass tests "${flags[@]}" "$@" -- //... "${excluded[@]}"
if [ "$sanitizers" = 1 ]; then
  run_pass asan+ubsan --config=sanitizers "${flags[@]}" "$@" -- \
    //tests/server/... //tests/client/... //tests/integration/...
  scripts/fuzz.sh --seconds "${PQKV_FUZZ_SECONDS:-60}" --tally "$work/tally" "$@"
fi

python3 - "$work/tally" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
skipped = [case for run in runs for case in run["skipped"]]
print(f"{len(skipped)} skipped ({'; '.join(skipped) if skipped else 'none'})")
failed = sum(run["failed"] for run in runs)
print(f"{sum(run['passed'] for run in runs)} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY

#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan (--config=fuzz,
# .bazelrc) and runs each for a bounded time from its checked-in corpus
# (tests/fuzz/corpus/<target>), printing the executions of each. Fails if any target
# crashes, trips a sanitizer, runs out of memory, times out on one input or fails a
# FUZZ_CHECK; the input that did it is saved under fuzz-findings/<target>/ (replay it with
# `bazel-bin/tests/fuzz/<target> FILE` after a --config=fuzz build, or add it to the
# corpus, where the default build's <target>_corpus_test replays it).
#
#   scripts/fuzz.sh [--seconds N] [--tally FILE] [--only TARGET] [bazel flags]
#
# --seconds N: each target's time (libFuzzer -max_total_time; default 60).
# --tally FILE: appends the results as scripts/test.sh counts them, each target one case
#   (scripts/count_test_results.py's JSON line).
# New inputs a run finds stay in a scratch corpus, not in the checked-in one.
set -uo pipefail
cd "$(dirname "$0")/.."

targets=(retrieve_request_fuzzer append_kv_fuzzer fetch_kv_fuzzer proto_convert_fuzzer
  ucx_offer_fuzzer)
seconds=60
tally=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --tally) tally=$2; shift 2 ;;
    --only) targets=("$2"); shift 2 ;;
    *) break ;;
  esac
done

record() {  # record PASSED FAILED
  [ -n "$tally" ] || return 0
  echo "{\"passed\": $1, \"failed\": $2, \"skipped\": []}" >>"$tally"
}

start=$(date +%s)
labels=("${targets[@]/#///tests/fuzz:}")
# gold warns once per ASan check routine it cannot export (harmless): left out.
bazel build --config=fuzz "$@" -- "${labels[@]}" 2>&1 |
  grep -v "ld.gold: warning: Cannot export local symbol"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
  echo "FAILED (fuzz): the fuzz targets did not build"
  record 0 "${#targets[@]}"
  exit 1
fi
built=$(date +%s)
bin=$(bazel info --config=fuzz "$@" bazel-bin 2>/dev/null)/tests/fuzz

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
summary=()
for target in "${targets[@]}"; do
  findings="fuzz-findings/$target"
  mkdir -p "$work/$target" "$findings"
  log="$work/$target.log"
  # -detect_leaks=0: the server frees on its own threads after an input returns, so
  # libFuzzer's per-input leak check would run LeakSanitizer after nearly every input
  # (measured: 51 instead of 1700 executions/s); ASan still checks for leaks at exit.
  # -timeout=30: one input taking that long is a finding (a hang).
  "$bin/$target" "$work/$target" "tests/fuzz/corpus/$target" \
    -max_total_time="$seconds" -timeout=30 -detect_leaks=0 -print_final_stats=1 \
    -artifact_prefix="$findings/" >"$log" 2>&1
  status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if [ "$status" -eq 0 ]; then
    passed=$((passed + 1))
    rmdir "$findings" 2>/dev/null
    line="$target: ${execs:-?} executions in ${seconds} s (${rate:-?}/s), no finding"
  else
    failed=$((failed + 1))
    cp "$log" "$findings/fuzz.log"
    line="FAILED (fuzz): $target exited $status after ${execs:-?} executions; input and log in $findings/"
    grep -E "ERROR: |SUMMARY: |FUZZ_CHECK|Assertion" "$log" | head -5
  fi
  echo "$line"
  summary+=("$line")
done
rmdir fuzz-findings 2>/dev/null
end=$(date +%s)
echo "fuzz: ${#targets[@]} targets x ${seconds} s; build $((built - start)) s, total $((end - start)) s"
printf '%s\n' "${summary[@]}"
record "$passed" "$failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# Checks the CUDA path on a GPU machine with one command, in a few minutes:
#   1. the CUDA kernel tests (every kernel against the plain CPU kernels, k-means'
#      assignment included) and the server-path test (LayerStore's GPU Retrieve against
#      its CPU Retrieve; k-means assigning on the device against the CPU's training);
#   2. compute-sanitizer's memcheck, racecheck and synccheck on the kernel tests, with
#      PQKV_CUDA_TEST_SMALL=1 (cases of at most 5000 tokens: the tools slow kernels
#      down tens of times); a device that refuses the tool is reported as such;
#   3. one table of the results, then the timing table of kernels/cuda/cuda_timing.cc
#      (layer retrieval at 131072 tokens, 8 kv heads, 32 query heads, d = 128, k = 4096
#      for PQ 2 x 6 and 4 x 8 bits, at a fixed n and at n, n+1, n+2, ...; the gather of
#      the selected K/V rows; one kv head's index build, k-means on the CPU and on the
#      device).
#
#   kernels/cuda/device_check.sh --prebuilt DIR [cuda_timing flags]
#       Runs DIR/device_check.tar.gz, made by kernels/cuda/package_device_check.sh DIR:
#       no Bazel, no apt, no network. What the device machines lent to this project need
#       (see kernels/cuda/README.md for the one-call command and its carry list).
#   kernels/cuda/device_check.sh [cuda_timing flags]
#       Installs the Debian packages, packages with Bazel into a temporary folder, then
#       runs as above (a GPU machine set up like the build machines).
#
# Exit status: 0 when every check passed, and also where there is no CUDA device (it
# says "no CUDA device" and checks nothing); 1 when a check failed or a program could not
# start. Extra arguments go to cuda_timing (e.g. --tokens=262144).
set -uo pipefail
cd "$(dirname "$0")/../.."

prebuilt=""
if [ "${1:-}" = "--prebuilt" ]; then
  if [ $# -lt 2 ]; then
    echo "usage: $0 --prebuilt DIR [cuda_timing flags]" >&2
    exit 1
  fi
  prebuilt="$2"
  shift 2
else
  scripts/install_deps.sh || exit 1
  prebuilt="$(mktemp -d)"
  kernels/cuda/package_device_check.sh "${prebuilt}" || exit 1
fi
package="${prebuilt}/device_check.tar.gz"
if [ ! -f "${package}" ]; then
  echo "device_check: ${package} not found; make it with kernels/cuda/package_device_check.sh ${prebuilt}" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
tar -C "${work}" -xzf "${package}" || exit 1
bin="${work}/bin"
export LD_LIBRARY_PATH="${work}/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
# The packaged C++ runtime only where the machine's own is missing or too old (ldd
# says "not found" for a missing library or symbol version).
if [[ "$(ldd "${bin}"/* 2>&1)" == *"not found"* ]]; then
  export LD_LIBRARY_PATH="${work}/lib-fallback:${LD_LIBRARY_PATH}"
  echo "device_check: using the packaged libstdc++/libgcc_s"
fi
for program in "${bin}"/*; do
  missing="$(ldd "${program}" 2>&1 | grep 'not found')"
  if [ -n "${missing}" ]; then
    echo "device_check: FAILED: $(basename "${program}") cannot start: ${missing}" >&2
    exit 1
  fi
done
echo "device_check: package of commit $(cat "${work}/COMMIT")"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
else
  echo "device_check: nvidia-smi not found (the tests still look for a device)"
fi

# results: one "name<TAB>result" line per check, printed as the table at the end.
results="${work}/results"
: >"${results}"
failed=0

# run_test NAME: runs bin/NAME (a Catch2 test); PASS, FAIL or "no CUDA device".
run_test() {
  local name=$1 log="${work}/$1.log"
  echo "== ${name}"
  "${bin}/${name}" >"${log}" 2>&1
  local rc=$?
  if grep -q "SKIPPED: no CUDA device" "${log}"; then
    printf '%s\t%s\n' "${name}" "no CUDA device" >>"${results}"
    cat "${log}"
    return 2
  fi
  local summary
  summary="$(grep -E '^(All tests passed|test cases:)' "${log}" | tail -1)"
  if [ "${rc}" -eq 0 ]; then
    printf '%s\t%s\n' "${name}" "PASS: ${summary}" >>"${results}"
    tail -n 3 "${log}"
  else
    printf '%s\t%s\n' "${name}" "FAIL (exit ${rc}): ${summary}" >>"${results}"
    failed=1
    tail -n 60 "${log}"
  fi
  return 0
}

run_test pq_retrieval_cuda_test
no_device=$?
run_test layer_store_gpu_test
if [ "${no_device}" -eq 2 ]; then
  # Every program still starts: the timing tool says there is no device.
  echo "== cuda_timing"
  "${bin}/cuda_timing" >"${work}/timing.log" 2>&1
  cat "${work}/timing.log"
  if grep -q "no CUDA device" "${work}/timing.log"; then
    printf '%s	%s
' "cuda_timing" "no CUDA device" >>"${results}"
  else
    printf '%s	%s
' "cuda_timing" "FAIL: $(tail -n 1 "${work}/timing.log")" >>"${results}"
    failed=1
  fi
  printf '%s	%s
' "compute-sanitizer" "not run: no CUDA device" >>"${results}"
  echo
  echo "== Results (commit $(cat "${work}/COMMIT"))"
  awk -F'\t' '{ printf "  %-30s %s\n", $1, $2 }' "${results}"
  if [ "${failed}" -ne 0 ]; then
    echo "device_check: FAILED (see the table above)"
    exit 1
  fi
  echo "device_check: no CUDA device: nothing was checked (the package started and ran here;" \
    "run it on a GPU machine)"
  exit 0
fi

# Sanitizers on the kernel tests, small cases only, each bounded by
# PQKV_SANITIZER_TIMEOUT seconds (150), so that the whole check fits one 10-minute call.
sanitizer_timeout="${PQKV_SANITIZER_TIMEOUT:-150}"
sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
for tool in memcheck racecheck synccheck; do
  name="compute-sanitizer ${tool}"
  if [ ! -x "${sanitizer}" ]; then
    printf '%s\t%s\n' "${name}" "not run: compute-sanitizer not found" >>"${results}"
    continue
  fi
  echo "== ${name}"
  log="${work}/sanitizer_${tool}.log"
  PQKV_CUDA_TEST_SMALL=1 timeout "${sanitizer_timeout}" "${sanitizer}" --tool "${tool}" --error-exitcode 99 \
    "${bin}/pq_retrieval_cuda_test" >"${log}" 2>&1
  rc=$?
  tail -n 5 "${log}"
  errors="$(grep -E '^========= (ERROR SUMMARY|RACECHECK SUMMARY)' "${log}" | tail -1 | sed 's/^========= //')"
  if grep -qE 'Device not supported|not supported on this device|Unable to find injection|Target application terminated before first instrumented API call' "${log}"; then
    printf '%s\t%s\n' "${name}" "REFUSED by the device: $(grep -m1 -E '^========= (Error|ERROR)' "${log}")" >>"${results}"
  elif [ "${rc}" -eq 0 ]; then
    printf '%s\t%s\n' "${name}" "PASS: ${errors:-no summary}" >>"${results}"
  elif [ "${rc}" -eq 124 ]; then
    printf '%s\t%s\n' "${name}" "TIMEOUT after ${sanitizer_timeout} s" >>"${results}"
    failed=1
  else
    printf '%s\t%s\n' "${name}" "FAIL (exit ${rc}): ${errors:-see the log above}" >>"${results}"
    failed=1
    tail -n 40 "${log}"
  fi
done

echo
echo "== Correctness against the CPU reference (commit $(cat "${work}/COMMIT"))"
awk -F'\t' '{ printf "  %-30s %s\n", $1, $2 }' "${results}"
echo
echo "== Timing"
if ! "${bin}/cuda_timing" --commit="$(cat "${work}/COMMIT")" "$@"; then
  echo "device_check: cuda_timing failed" >&2
  failed=1
fi
if [ "${failed}" -ne 0 ]; then
  echo "device_check: FAILED (see the table above)"
  exit 1
fi
echo "device_check: OK"

#!/usr/bin/env bash
# Sets up (Debian packages), builds and runs every test, then prints one line:
# "N passed, N failed", counting test cases from the JUnit results Bazel keeps: Catch2's
# and pytest's (tests/python), one case per other test target. Test cases reported
# skipped (the CUDA tests without a GPU, the torch tests without torch) are counted
# apart, in a line "N skipped (...)" just before it.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh || exit 1

targets=(//...)
if [ ! -x /usr/local/cuda/bin/nvcc ]; then
  # No CUDA toolkit: build the CPU backend only and leave the CUDA kernels out.
  echo "test.sh: no /usr/local/cuda/bin/nvcc; building without CUDA (--define=pqkv_cuda=off)"
  targets=(--define=pqkv_cuda=off -- //... -//kernels/cuda/... -//tests/kernels/cuda/... -//third_party/cuda:cudart)
fi
# Bazel's summary names every test target of this run; only their results are counted
# (bazel-testlogs also keeps results of targets since deleted or renamed).
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
bazel test --test_summary=short "$@" "${targets[@]}" 2>&1 | tee "$summary"
bazel_status=${PIPESTATUS[0]}

python3 - "$bazel_status" "$summary" <<'PY'
import os, re, sys, xml.etree.ElementTree as ET
passed = failed = 0
skipped = []
status_line = re.compile(r"^(//\S*:\S+)\s+(?:\(cached\)\s+)?(PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS|"
                         r"INCOMPLETE|REMOTE FAILURE|FAILED TO BUILD|SKIPPED)\b")
targets = {}
with open(sys.argv[2], errors="replace") as f:
    for line in f:
        match = status_line.match(line.strip())
        if match:
            targets[match.group(1)] = match.group(2)
for label, status in sorted(targets.items()):
    path = os.path.join("bazel-testlogs", label[2:].replace(":", "/"), "test.xml")
    if not os.path.exists(path) or status in ("NO STATUS", "FAILED TO BUILD", "INCOMPLETE"):
        failed += 1
        print(f"FAILED: {label}: {status}, no results")
        continue
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        failed += 1
        print(f"unreadable test results: {path}")
        continue
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
            print(f"FAILED: {path.split('/')[1:-1]} {case.get('name')}")
        elif case.find("skipped") is not None:
            reason = case.find("skipped").get("message") or "skipped"
            skipped.append(f"{'/'.join(path.split('/')[1:-1])} {case.get('name')}: {reason}")
        else:
            passed += 1
bazel_status = int(sys.argv[1])
if bazel_status != 0 and failed == 0:
    failed = 1  # the build itself failed, or a test left no results
    print(f"bazel test exited with {bazel_status}")
print(f"{len(skipped)} skipped ({'; '.join(skipped) if skipped else 'none'})")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY

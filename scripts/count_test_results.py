"""Counts one `bazel test` run's results for scripts/test.sh: the test cases in the JUnit
files Bazel keeps (Catch2's, pytest's; one case per other test target) of exactly the
targets the run's summary names (bazel-testlogs also keeps results of targets since
deleted or renamed). Prints each failure and appends "passed failed" and the skipped cases
to the tally file.

    python3 scripts/count_test_results.py NAME BAZEL_STATUS SUMMARY_FILE TALLY_FILE
"""

import json
import os
import re
import sys
import xml.etree.ElementTree as ET

STATUS_LINE = re.compile(r"^(//\S*:\S+)\s+(?:\(cached\)\s+)?(PASSED|FAILED|TIMEOUT|FLAKY|"
                         r"NO STATUS|INCOMPLETE|REMOTE FAILURE|FAILED TO BUILD|SKIPPED)\b")


def main() -> None:
    name, bazel_status, summary, tally = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    passed = failed = 0
    skipped = []
    targets = {}
    with open(summary, errors="replace") as f:
        for line in f:
            match = STATUS_LINE.match(line.strip())
            if match:
                targets[match.group(1)] = match.group(2)
    for label, status in sorted(targets.items()):
        where = label[2:].replace(":", "/")
        path = os.path.join("bazel-testlogs", where, "test.xml")
        if not os.path.exists(path) or status in ("NO STATUS", "FAILED TO BUILD", "INCOMPLETE"):
            failed += 1
            print(f"FAILED ({name}): {label}: {status}, no results")
            continue
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:
            failed += 1
            print(f"FAILED ({name}): unreadable test results: {path}")
            continue
        for case in root.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
                print(f"FAILED ({name}): {where} {case.get('name')}")
            elif case.find("skipped") is not None:
                reason = case.find("skipped").get("message") or "skipped"
                skipped.append(f"{name}: {where} {case.get('name')}: {reason}")
            else:
                passed += 1
    if bazel_status != 0 and failed == 0:
        failed = 1  # the build itself failed, or a test left no results
        print(f"FAILED ({name}): bazel test exited with {bazel_status}")
    print(f"{name}: {passed} passed, {failed} failed, {len(skipped)} skipped")
    with open(tally, "a") as f:
        f.write(json.dumps({"passed": passed, "failed": failed, "skipped": skipped}) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Runs bench/load_bench small and checks it exits 0 with 0 errors and rows checked.
set -euo pipefail
out=$(bench/load_bench --sessions=4 --steps=5 --streams=2 --tokens=512 --sample_every=1 --json)
echo "$out"
# The JSON line alone: UCX writes its own log lines (a refused connect it retries, say) to
# stdout too.
python3 - "$out" <<'PY'
import json, sys
r = json.loads([line for line in sys.argv[1].splitlines() if line.startswith("{")][-1])
assert r["errors"] == 0, r["error_messages"]
assert r["rows_mismatched"] == 0, r
assert r["rows_checked"] > 0, r
assert r["retrieve_items"] == 4 * 5 * r["layers"], r
assert r["sessions_left"] == 0, r
PY

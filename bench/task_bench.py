"""Task accuracy of a real model decoding through pqkv, against full attention.

SmolLM2-135M-Instruct (python/pqkv_worker) on contexts of licence text shipped in the
repository (python/pqkv_worker/tasks.py says how they are built), every method x budget
a lane decoding in lockstep with the others (python/pqkv_worker/decoder.py):

  passkey    5-digit keys at depths 10%..90% (--keys per context, one shared prefill,
             one question appended per key); exact match of the key in the greedy answer
  copy       a 64-token random passage early, its first 8 tokens repeated at the end;
             teacher-forced top-1 accuracy on the passage's tokens 9..64
  agreement  256 tokens of the text after the context, teacher-forced: top-1 agreement
             with full attention, and the mean NLL relative to full attention's

Methods (python/pqkv_worker/methods.py): full, pqkv (the server's default: one 4-bit
sub-space per dimension; 2 x 6 + rerank 4 before stop 27), pqkv-recommended (4 x 8 + RoPE pairs + rerank 4), oracle, streaming, quest;
each but full attends to 4 sinks + the 64-token window + k = budget x context tokens (a
budget >= 1 is k itself).

    PY=$(scripts/install_model.sh --print-python)
    # /tmp/pqkvpy: pqkv (sources + bazel-bin's _native.so) and pqkv_worker, as made in
    # docs/quality.md's Commands (or any path where both import)
    PYTHONPATH=/tmp/pqkvpy $PY bench/task_bench.py \\
        --lengths 2048,4096,8192 --budgets 0.03125,0.0625,0.125 \\
        --methods full,pqkv,pqkv-recommended,oracle,streaming,quest --json

With --json, one JSON object per line and per task x method x budget x length:
task, method, budget (null for full), context_tokens, trials, accuracy (passkey: keys
found / trials; copy: tokens right / tokens), accuracy_where_full_right and
trials_where_full_right (passkey), agreement and nll_delta (agreement: NLL / full's NLL
- 1), nll, roundtrip_us (pqkv: median retrieve round trip per layer, rows included),
seconds. Without it, a table. The setup (commit, CPU, versions, prefill times) goes to
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

import pqkv
from pqkv.local_server import LocalServer
from pqkv_worker import methods, model, runner, tasks
from pqkv_worker.decoder import Decoder


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def setup_block(loaded) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    log(f"Setup: commit {commit or '?'}; {cpu} x {os.cpu_count()}; python "
        f"{platform.python_version()}, numpy {np.__version__}, pqkv {pqkv.__version__}; "
        f"model {os.path.basename(loaded.path)} loaded in {loaded.load_seconds:.1f} s; "
        f"text {os.path.relpath(tasks.TEXT_PATH)}; OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")


def rows_for(task: str, length_tokens: int, specs, per_label: dict, seconds: float):
    for spec in specs:
        row = {"task": task, "method": spec.name, "budget": spec.budget,
               "context_tokens": length_tokens, "seconds": round(seconds, 1)}
        row.update(per_label[spec.label])
        yield row


def median_rt(values):
    return round(statistics.median(values), 1) if values else None


def run_length(decoder, loaded, length, specs, args):
    tok = loaded.tokenizer
    context = tasks.build_context(tok, length, args.keys, seed=args.seed)
    n = len(context.ids)
    t0 = time.perf_counter()
    cache = runner.prefill(loaded.model, context.ids, length)
    log(f"length {length}: context {n} tokens, prefill {time.perf_counter() - t0:.1f} s; "
        f"k = " + ", ".join(f"{b:g}: {methods.MethodSpec('x', b).k_for(n)}"
                            for b in args.budget_list))
    out = []
    if "passkey" in args.task_list:
        t0 = time.perf_counter()
        results = runner.passkey_answers(decoder, cache, context, specs, tok)
        full_right = [r for r in results if r["correct"].get("full")]
        per = {}
        for spec in specs:
            label = spec.label
            rts = [x for r in results for x in r["roundtrip_us"].get(label, [])]
            per[label] = {
                "trials": len(results),
                "accuracy": sum(r["correct"][label] for r in results) / len(results),
                "trials_where_full_right": len(full_right),
                "accuracy_where_full_right": (sum(r["correct"][label] for r in full_right) /
                                              len(full_right)) if full_right else None,
                "roundtrip_us": median_rt(rts)}
        for r in results:
            log(f"  passkey {r['key']} at {r['depth']:.0%}: " + "; ".join(
                f"{label} {'ok' if r['correct'][label] else repr(r['answers'][label])}"
                for label in r["answers"]))
        out += rows_for("passkey", n, specs, per, time.perf_counter() - t0)
    if "copy" in args.task_list:
        t0 = time.perf_counter()
        r = runner.copy_run(decoder, cache, context, specs)
        truth = context.copy_passage[len(context.copy_prompt) - 1:]
        per = {spec.label: {
            "trials": 1, "tokens": len(truth),
            "accuracy": float(np.mean(np.asarray(r.tokens[spec.label]) == truth)),
            "roundtrip_us": median_rt(r.roundtrip_us.get(spec.label, []))} for spec in specs}
        out += rows_for("copy", n, specs, per, time.perf_counter() - t0)
    if "agreement" in args.task_list:
        t0 = time.perf_counter()
        r = runner.agreement_run(decoder, cache, context, specs)
        full = np.asarray(r.tokens["full"])
        full_nll = float(np.mean(r.nll["full"]))
        per = {spec.label: {
            "trials": len(full),
            "agreement": float(np.mean(np.asarray(r.tokens[spec.label]) == full)),
            "nll": round(float(np.mean(r.nll[spec.label])), 4),
            "nll_delta": round(float(np.mean(r.nll[spec.label])) / full_nll - 1, 5),
            "roundtrip_us": median_rt(r.roundtrip_us.get(spec.label, []))} for spec in specs}
        log(f"  agreement: median step {1e3 * statistics.median(r.step_seconds):.0f} ms for "
            f"{len(specs)} lanes")
        out += rows_for("agreement", n, specs, per, time.perf_counter() - t0)
    return out


def print_table(rows) -> None:
    print(f"{'task':<10}{'tokens':>7} {'method':<18}{'budget':>8}{'trials':>7}{'acc':>7}"
          f"{'acc|full':>9}{'agree':>7}{'nll d':>9}{'rt us':>8}")
    for r in rows:
        def f(key, fmt):
            return format(r[key], fmt) if r.get(key) is not None else "-"
        print(f"{r['task']:<10}{r['context_tokens']:>7} {r['method']:<18}"
              f"{f('budget', 'g'):>8}{r['trials']:>7}{f('accuracy', '.3f'):>7}"
              f"{f('accuracy_where_full_right', '.3f'):>9}{f('agreement', '.3f'):>7}"
              f"{f('nll_delta', '+.4f'):>9}{f('roundtrip_us', '.0f'):>8}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="2048,4096,8192",
                        help="positions per context (8192 is SmolLM2's context)")
    parser.add_argument("--budgets", default="0.03125,0.0625,0.125")
    parser.add_argument("--methods", default=",".join(methods.METHODS))
    parser.add_argument("--tasks", default="passkey,copy,agreement")
    parser.add_argument("--keys", type=int, default=5, help="pass keys per context")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--server", help="pqkv-server address; default: start a local one")
    args = parser.parse_args()
    args.budget_list = [float(b) for b in args.budgets.split(",") if b]
    args.task_list = [t for t in args.tasks.split(",") if t]
    names = [m for m in args.methods.split(",") if m]
    if "full" not in names:
        names.insert(0, "full")  # the reference every task compares with
    specs = methods.method_specs(names, args.budget_list)

    loaded = model.load()
    setup_block(loaded)
    start = time.perf_counter()
    rows = []
    with contextlib.ExitStack() as stack:
        client = None
        if any(spec.uses_pqkv for spec in specs):
            address = args.server or stack.enter_context(
                LocalServer(args=["--index_threads=2"])).address
            client = stack.enter_context(pqkv.Client(address))
        decoder = Decoder(loaded.model, client, sinks=args.sinks, window=args.window)
        stack.callback(decoder.close)
        for length in (int(x) for x in args.lengths.split(",") if x):
            t0 = time.perf_counter()
            new = run_length(decoder, loaded, length, specs, args)
            log(f"length {length}: {time.perf_counter() - t0:.0f} s")
            for row in new:
                if args.json:
                    print(json.dumps(row), flush=True)
            rows += new
    if not args.json:
        print_table(rows)
    log(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

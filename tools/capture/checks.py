"""`capture.py --check`: correctness checks of the numpy forward pass on the GGUF.

(a) greedy chat continuation must be sensible text (must mention Paris);
(b) two identical forward passes must give bitwise-identical logits;
(c) RoPE layout: HF-layout weights + rotate_half RoPE must give the same logits
    and (permuted) keys as llama.cpp's interleaved weights + interleaved RoPE,
    while a mismatched pairing must not (so the check can fail).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from pqkv_worker.gguf_weights import LlamaWeights, half_to_interleaved
from pqkv_worker.llama_numpy import LlamaNumpy


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def with_layout(w: LlamaWeights, layout: str) -> LlamaWeights:
    """Same weights with Q/K rows re-permuted from "half" to `layout`."""
    if layout == w.rope_layout:
        return w
    assert w.rope_layout == "half" and layout == "interleaved"
    c = w.config
    layers = [{**lw, "wq": np.ascontiguousarray(half_to_interleaved(lw["wq"], c.num_heads)),
               "wk": np.ascontiguousarray(half_to_interleaved(lw["wk"], c.num_kv_heads))}
              for lw in w.layers]
    return dataclasses.replace(w, layers=layers, rope_layout=layout)


def interleaved_dims_to_half(x: np.ndarray) -> np.ndarray:
    """Reorder the last (head_dim) axis: interleaved pair dims (2i, 2i+1) -> (i, i+d/2)."""
    d = x.shape[-1]
    return x.reshape(*x.shape[:-1], d // 2, 2).swapaxes(-1, -2).reshape(x.shape)


def check_greedy(model: LlamaNumpy, tok) -> bool:
    question = "What is the capital of France?"
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": question}]))
    stop = {i for i in (tok.eos_id, tok.id_of("<|im_end|>"), tok.id_of("<|endoftext|>")) if i is not None}
    t0 = time.perf_counter()
    out, _ = model.greedy(ids, 48, stop_ids=stop)
    text = tok.decode(out, skip_special=True)
    print(f"[a] greedy ({len(out)} tokens, {time.perf_counter() - t0:.1f}s): {question!r} -> {text!r}")
    ok = "paris" in text.lower()
    print(f"[a] {'PASS' if ok else 'FAIL'}: continuation mentions Paris")
    return ok


def check_determinism(model: LlamaNumpy, ids: list[int]) -> bool:
    runs = []
    for _ in range(2):
        cache = model.new_cache(len(ids))
        runs.append(model.forward(ids, cache, all_logits=True))
    ok = np.array_equal(runs[0], runs[1])
    print(f"[b] {'PASS' if ok else 'FAIL'}: two forwards of {len(ids)} tokens give "
          f"bitwise-identical logits (max |diff| {np.abs(runs[0] - runs[1]).max():g})")
    return ok


def check_layout(w_half: LlamaWeights, ids: list[int]) -> bool:
    w_il = with_layout(w_half, "interleaved")
    # Mismatch: interleaved weights but rotate_half RoPE (what you get if the
    # converter's permutation is not undone).
    w_bad = dataclasses.replace(w_il, rope_layout="half")
    res = {}
    for name, w in (("half", w_half), ("interleaved", w_il), ("mismatched", w_bad)):
        m = LlamaNumpy(w)
        cache = m.new_cache(len(ids))
        res[name] = (m.forward(ids, cache, all_logits=True), cache)
    lh, ch = res["half"]
    li, ci = res["interleaved"]
    lb, _ = res["mismatched"]
    scale = np.abs(lh).max()
    d_logits = np.abs(lh - li).max()
    d_bad = np.abs(lh - lb).max()
    d_keys = max(np.abs(ch.k[l] - interleaved_dims_to_half(ci.k[l])).max() for l in range(len(ch.k)))
    same_argmax = np.array_equal(lh.argmax(-1), li.argmax(-1))
    ok = d_logits <= 1e-3 * scale and d_keys <= 1e-3 and same_argmax and d_bad > 1e-1 * scale
    print(f"[c] layouts over {len(ids)} tokens: max|logit diff| half vs interleaved = {d_logits:.3g} "
          f"(logit scale {scale:.3g}), same argmax at every position: {same_argmax}; "
          f"max|key diff| after dim reorder = {d_keys:.3g}; mismatched pairing differs by {d_bad:.3g}")
    print(f"[c] {'PASS' if ok else 'FAIL'}: HF-layout (rotate_half) weights match llama.cpp interleaved RoPE")
    return ok


def run_checks(w_half: LlamaWeights, tok, prompt_text: str) -> bool:
    model = LlamaNumpy(w_half)
    ids = tok.encode(prompt_text)[:256]
    results = [check_greedy(model, tok), check_determinism(model, ids), check_layout(w_half, ids)]
    print("check:", "PASS" if all(results) else "FAIL")
    return all(results)

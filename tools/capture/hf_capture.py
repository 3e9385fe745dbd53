"""`capture.py --hf DIR`: capture from a Hugging Face Llama model with transformers.

Runs on CPU in fp32 with use_cache=True. Keys/values come from the returned KV
cache (post-RoPE, HF rotate_half layout, [batch, kv_heads, T, head_dim]).
Queries are not cached by transformers, so a forward hook on each layer's
self_attn.q_proj records the projection output, and the model's own rotary
embedding + apply_rotary_pos_emb rotate it exactly as the attention layer does.
torch and transformers are imported only here.
"""

from __future__ import annotations

import inspect
import os
import sys
import time


def _cache_layer_kv(cache, li):
    """(keys, values) of layer li for the cache classes of transformers 4.x and 5.x."""
    if hasattr(cache, "layers"):
        return cache.layers[li].keys, cache.layers[li].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[li], cache.value_cache[li]
    return cache[li][0], cache[li][1]


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    if "rope_type" in params and params["rope_type"] != "default":
        print(f"warning: rope_type {params['rope_type']!r}; manifest rope_theta is the base only", file=sys.stderr)
    return float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))


def capture_hf(args, text, parse_layers, prompt_length, query_positions, log):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.hf)
    model = AutoModelForCausalLM.from_pretrained(args.hf, dtype=torch.float32)
    model.eval()
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    ctx = getattr(cfg, "max_position_embeddings", 1 << 30)
    log(f"loaded {args.hf} in {time.perf_counter() - t0:.1f}s: {n_layers} layers, {H} q heads, "
        f"{Hkv} kv heads, head_dim {d}, context {ctx}")

    ids = tok(text, add_special_tokens=True)["input_ids"]
    n = prompt_length(len(ids), args.max_tokens, ctx, args.generate)
    ids = ids[:n]
    layers = parse_layers(args.layers, n_layers)
    qpos = query_positions(n, args.last, args.generate)
    decoder_layers = model.model.layers

    # Hook state: absolute positions of the tokens in the current forward call.
    cur_positions: list[int] = []
    raw_q: dict[int, dict[int, torch.Tensor]] = {li: {} for li in layers}
    t_layer = [time.perf_counter()]

    def make_hook(li):
        def hook(_module, _inputs, output):
            want = [(i, p) for i, p in enumerate(cur_positions) if p in qpos_set]
            for i, p in want:
                raw_q[li][p] = output[0, i].detach().clone()  # [H*d], pre-RoPE
        return hook

    def make_progress(li):
        def hook(_module, _inputs, _output):
            if len(cur_positions) > 1:  # per-layer progress only in the prefill
                now = time.perf_counter()
                log(f"  prefill layer {li + 1:2d}/{n_layers} {now - t_layer[0]:6.2f}s")
                t_layer[0] = now
        return hook

    qpos_set = set(qpos)
    handles = [decoder_layers[li].self_attn.q_proj.register_forward_hook(make_hook(li))
               for li in layers]
    handles += [layer.register_forward_hook(make_progress(li)) for li, layer in enumerate(decoder_layers)]
    # Pass the cache under whichever keyword this transformers version uses.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    timings = {}
    generated = []
    t_fwd = time.perf_counter()
    with torch.no_grad():
        cur_positions[:] = range(n)
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        timings["prefill_s"] = time.perf_counter() - t_fwd
        for i in range(args.generate):
            nxt = int(out.logits[0, -1].argmax())
            generated.append(nxt)
            log(f"  generated {i + 1}/{args.generate}: {tok.decode([nxt])!r}")
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values")
            cur_positions[:] = [n + i]  # feed every generated token back
            out = model(input_ids=torch.tensor([[nxt]]), use_cache=True, **{cache_kw: cache},
                        position_ids=torch.tensor([[n + i]]))
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values")
    timings["forward_s"] = time.perf_counter() - t_fwd
    timings["decode_s"] = timings["forward_s"] - timings["prefill_s"]
    for h in handles:
        h.remove()

    rope_mod = sys.modules[type(decoder_layers[0].self_attn).__module__]
    pos_ids = torch.tensor([qpos])
    per_layer = {}
    with torch.no_grad():
        for li in layers:
            q = torch.stack([raw_q[li][p] for p in qpos])  # [Q, H*d]
            q = q.view(1, len(qpos), H, d).transpose(1, 2)  # [1, H, Q, d]
            cos, sin = model.model.rotary_emb(q, pos_ids)
            q, _ = rope_mod.apply_rotary_pos_emb(q, q, cos, sin)
            k, v = _cache_layer_kv(cache, li)
            per_layer[li] = (k[0].numpy(), v[0].numpy(), q[0].transpose(0, 1).numpy())
    T = per_layer[layers[0]][0].shape[1]
    assert T == n + args.generate, (T, n, args.generate)
    name = os.path.basename(os.path.normpath(args.hf))
    return dict(model=name, source=os.path.abspath(args.hf), num_layers_in_model=n_layers,
                num_kv_heads=Hkv, num_query_heads=H, head_dim=d, rope_theta=_rope_theta(cfg),
                prompt_tokens=n, query_positions=qpos, generated_text=tok.decode(generated),
                tokens=list(ids) + generated, layers=per_layer, timings=timings)

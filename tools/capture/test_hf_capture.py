#!/usr/bin/env python3
"""Test of the HF path (`capture.py --hf`) and a cross-check of the numpy forward.

Needs torch + transformers (see README.md). Three checks, non-zero exit on failure:
 1. a tiny random LlamaForCausalLM (saved with save_pretrained, with a tokenizer
    built from the GGUF) is captured with `capture.py --hf`; the captured keys,
    values and queries must equal ones recomputed independently from the
    model's hidden states (input_layernorm -> k/q/v_proj -> RoPE);
 2. the numpy forward pass (llama_numpy.py) run on the same tiny weights must
    give the same K/V/Q and generated tokens as the HF capture;
 3. the SmolLM2 GGUF weights, un-permuted to the HF layout, loaded into a
    transformers LlamaForCausalLM must give the same logits as llama_numpy.py
    (an independent check of the RoPE layout fix and the forward pass).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))  # pqkv_worker

import gguf  # noqa: E402
from pqkv_worker import gguf_weights  # noqa: E402
from pqkv_worker import tokenizer as tk  # noqa: E402
from capture_format import validate_capture  # noqa: E402
from pqkv_worker.gguf_weights import LlamaConfig as NpConfig, LlamaWeights  # noqa: E402
from pqkv_worker.llama_numpy import LlamaNumpy  # noqa: E402

failures = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}: {name} {detail}")
    if not ok:
        failures.append(name)


def np_weights_from_hf(model) -> LlamaWeights:
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    c = NpConfig(num_layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, ffn=cfg.intermediate_size,
                 num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
                 head_dim=cfg.head_dim, rope_theta=cfg.rope_parameters["rope_theta"],
                 rms_eps=cfg.rms_norm_eps, context_length=cfg.max_position_embeddings,
                 vocab_size=cfg.vocab_size)
    layers = []
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        layers.append({"attn_norm": sd[p + "input_layernorm.weight"],
                       "wq": sd[p + "self_attn.q_proj.weight"], "wk": sd[p + "self_attn.k_proj.weight"],
                       "wv": sd[p + "self_attn.v_proj.weight"], "wo": sd[p + "self_attn.o_proj.weight"],
                       "ffn_norm": sd[p + "post_attention_layernorm.weight"],
                       "w_gate": sd[p + "mlp.gate_proj.weight"], "w_up": sd[p + "mlp.up_proj.weight"],
                       "w_down": sd[p + "mlp.down_proj.weight"]})
    embed = sd["model.embed_tokens.weight"]
    return LlamaWeights(config=c, rope_layout="half", embed=embed,
                        lm_head=sd.get("lm_head.weight", embed), final_norm=sd["model.norm.weight"],
                        layers=layers)


def hf_from_np_weights(w: LlamaWeights):
    """A transformers Llama holding llama_numpy weights (HF layout)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    c = w.config
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden, intermediate_size=c.ffn,
                      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                      num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
                      max_position_embeddings=c.context_length, rms_norm_eps=c.rms_eps,
                      rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                      tie_word_embeddings=w.lm_head is w.embed)
    model = LlamaForCausalLM(cfg).eval()
    sd = {"model.embed_tokens.weight": w.embed, "model.norm.weight": w.final_norm}
    if w.lm_head is not w.embed:
        sd["lm_head.weight"] = w.lm_head
    names = {"attn_norm": "input_layernorm", "wq": "self_attn.q_proj", "wk": "self_attn.k_proj",
             "wv": "self_attn.v_proj", "wo": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj", "w_down": "mlp.down_proj"}
    for i, lw in enumerate(w.layers):
        for k, v in lw.items():
            sd[f"model.layers.{i}.{names[k]}.weight"] = v
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                                                strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    return model


def recompute_kvq(model, tokens, qpos):
    """K/V/Q per layer from hidden states, independent of the KV cache and the hooks."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    cfg = model.config
    H, Hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    T = len(tokens)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens]), output_hidden_states=True, use_cache=False)
        pos = torch.arange(T)[None]
        res = {}
        for li, layer in enumerate(model.model.layers):
            h = layer.input_layernorm(out.hidden_states[li])
            q = layer.self_attn.q_proj(h).view(1, T, H, d).transpose(1, 2)
            k = layer.self_attn.k_proj(h).view(1, T, Hkv, d).transpose(1, 2)
            v = layer.self_attn.v_proj(h).view(1, T, Hkv, d).transpose(1, 2)
            cos, sin = model.model.rotary_emb(h, pos)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            res[li] = (k[0].numpy(), v[0].numpy(), q[0, :, qpos].transpose(0, 1).numpy())
    return res, out.logits[0].numpy()


def test_tiny_hf_capture(tmp: str, gguf_path: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    gtok = tk.build_tokenizer(gguf.GGUFReader(gguf_path))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=gtok.tok, eos_token="<|im_end|>",
                                     bos_token="<|im_start|>", unk_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=512, rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
                      tie_word_embeddings=True)
    model_dir = os.path.join(tmp, "tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    hf_tok.save_pretrained(model_dir)

    out_dir = os.path.join(tmp, "cap")
    cmd = [sys.executable, os.path.join(HERE, "capture.py"), "--hf", model_dir, "--max-tokens", "100",
           "--generate", "5", "--last", "7", "--layers", "0,2", "--out", out_dir]
    r = subprocess.run(cmd, capture_output=True, text=True)
    print(r.stdout.strip())
    check("capture.py --hf exits 0", r.returncode == 0, r.stderr[-2000:] if r.returncode else "")
    if r.returncode:
        return
    m = validate_capture(out_dir)
    check("manifest shape", m["num_tokens"] == 105 and m["prompt_tokens"] == 100
          and m["query_positions"] == list(range(93, 105)) and [e["layer"] for e in m["layers"]] == [0, 2]
          and m["rope_theta"] == 5000.0 and m["num_kv_heads"] == 2 and m["num_query_heads"] == 4, json.dumps(m)[:300])
    tokens = np.load(os.path.join(out_dir, "tokens.npy")).tolist()
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref, _ = recompute_kvq(model, tokens, m["query_positions"])
    for e in m["layers"]:
        li = e["layer"]
        k, v, q = (np.load(os.path.join(out_dir, e[x])) for x in ("keys", "values", "queries"))
        rk, rv, rq = ref[li]
        # keys/values are stored as fp16: compare against fp16-rounded references
        dk = np.abs(k.astype(np.float32) - rk.astype(np.float16).astype(np.float32)).max()
        dv = np.abs(v.astype(np.float32) - rv.astype(np.float16).astype(np.float32)).max()
        dq = np.abs(q - rq).max()
        check(f"HF layer {li} keys/values/queries == recomputed", dk < 2e-3 and dv < 2e-3 and dq < 1e-4,
              f"(max diff k {dk:.2g}, v {dv:.2g}, q {dq:.2g})")

    # 2. numpy forward on the same weights and tokens
    npm = LlamaNumpy(np_weights_from_hf(model), query_block=32)
    capq: dict = {}
    gen, cache = npm.greedy(tokens[:100], 5, capture_q=capq, capture_positions=m["query_positions"])
    check("numpy greedy tokens == HF greedy tokens", gen == tokens[100:], f"{gen} vs {tokens[100:]}")
    for e in m["layers"]:
        li = e["layer"]
        k = np.load(os.path.join(out_dir, e["keys"])).astype(np.float32)
        q = np.load(os.path.join(out_dir, e["queries"]))
        nq = np.stack([capq[li][p] for p in m["query_positions"]])
        dk = np.abs(cache.k[li] - k).max()
        dq = np.abs(nq - q).max()
        check(f"numpy layer {li} keys/queries == HF capture", dk < 2e-3 and dq < 1e-4,
              f"(max diff k {dk:.2g}, q {dq:.2g})")


def test_gguf_in_transformers(gguf_path: str) -> None:
    w = gguf_weights.load_gguf(gguf_path, rope_layout="half")
    gtok = tk.build_tokenizer(gguf.GGUFReader(gguf_path))
    with open(os.path.join(HERE, "prompts", "gpl-3.0.txt")) as f:
        ids = gtok.encode(f.read())[:128]
    model = hf_from_np_weights(w)
    qpos = list(range(120, 128))
    ref, hf_logits = recompute_kvq(model, ids, qpos)
    npm = LlamaNumpy(w)
    cache = npm.new_cache(len(ids))
    np_logits = npm.forward(ids, cache, all_logits=True)
    d = np.abs(np_logits - hf_logits).max()
    dk = max(np.abs(cache.k[li] - ref[li][0]).max() for li in ref)
    same = np.array_equal(np_logits.argmax(-1), hf_logits.argmax(-1))
    check("SmolLM2 GGUF (HF layout) in transformers == llama_numpy", d < 1e-2 and dk < 1e-2 and same,
          f"(max logit diff {d:.2g} of scale {np.abs(hf_logits).max():.3g}, max key diff {dk:.2g}, "
          f"same argmax: {same})")


def main() -> int:
    gguf_path = gguf_weights.default_gguf_path()
    with tempfile.TemporaryDirectory() as tmp:
        test_tiny_hf_capture(tmp, gguf_path)
    test_gguf_in_transformers(gguf_path)
    print(f"{len(failures)} failed" if failures else "all HF checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

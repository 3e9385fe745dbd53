"""Writer and validator of the pqkv-capture-v1 directory format (see README.md).

Layout of DIR:
  manifest.json                      metadata + list of layers
  layer_LL_keys.npy / _values.npy    <f2, [num_kv_heads, T, head_dim], keys post-RoPE
  layer_LL_queries.npy               <f4, [len(query_positions), num_query_heads, head_dim]
  tokens.npy                         <i4, [T], the token ids (informational)
"""

from __future__ import annotations

import json
import os

import numpy as np

FORMAT = "pqkv-capture-v1"


def write_capture(out_dir: str, *, model: str, source: str, num_layers_in_model: int,
                  num_kv_heads: int, num_query_heads: int, head_dim: int,
                  rope_theta: float, prompt_tokens: int, query_positions: list[int],
                  generated_text: str, prompt_file: str, tokens: list[int],
                  layers: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """layers: layer -> (keys [Hkv,T,d], values [Hkv,T,d], queries [Q,H,d]); any float dtype."""
    os.makedirs(out_dir, exist_ok=True)
    T = len(tokens)
    entries = []
    for li in sorted(layers):
        k, v, q = layers[li]
        assert k.shape == v.shape == (num_kv_heads, T, head_dim), (k.shape, T)
        assert q.shape == (len(query_positions), num_query_heads, head_dim), q.shape
        names = {kind: f"layer_{li:02d}_{kind}.npy" for kind in ("keys", "values", "queries")}
        # np.save writes npy format 1.0 for these headers; explicit little-endian dtypes.
        np.save(os.path.join(out_dir, names["keys"]), np.ascontiguousarray(k, dtype="<f2"))
        np.save(os.path.join(out_dir, names["values"]), np.ascontiguousarray(v, dtype="<f2"))
        np.save(os.path.join(out_dir, names["queries"]), np.ascontiguousarray(q, dtype="<f4"))
        entries.append({"layer": li, **names})
    np.save(os.path.join(out_dir, "tokens.npy"), np.asarray(tokens, dtype="<i4"))
    manifest = {
        "format": FORMAT,
        "model": model,
        "source": source,
        "num_layers_in_model": num_layers_in_model,
        "num_kv_heads": num_kv_heads,
        "num_query_heads": num_query_heads,
        "head_dim": head_dim,
        "rope_theta": float(rope_theta),
        "rope_layout": "half",
        "num_tokens": T,
        "prompt_tokens": prompt_tokens,
        "query_positions": [int(p) for p in query_positions],
        "generated_text": generated_text,
        "prompt_file": prompt_file,
        "layers": entries,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return manifest


def validate_capture(out_dir: str) -> dict:
    """Re-read a capture and check every rule of the format; returns the manifest."""
    with open(os.path.join(out_dir, "manifest.json")) as f:
        m = json.load(f)
    assert m["format"] == FORMAT
    assert m["rope_layout"] == "half"
    T, hkv, H, d = m["num_tokens"], m["num_kv_heads"], m["num_query_heads"], m["head_dim"]
    qp = m["query_positions"]
    assert qp == sorted(set(qp)) and all(0 <= p < T for p in qp), "query_positions"
    assert H % hkv == 0
    for e in m["layers"]:
        for kind, dtype, shape in (("keys", "<f2", (hkv, T, d)), ("values", "<f2", (hkv, T, d)),
                                   ("queries", "<f4", (len(qp), H, d))):
            path = os.path.join(out_dir, e[kind])
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
            assert version == (1, 0), (path, version)
            a = np.load(path, mmap_mode="r")
            assert a.dtype.str == dtype and a.shape == shape and a.flags.c_contiguous, (path, a.dtype, a.shape)
            assert np.isfinite(a).all(), path
    return m

"""fp32 numpy forward pass of a Llama decoder (RMSNorm, GQA + RoPE, SwiGLU).

Causal attention is computed in blocks of queries against only the keys they
may see, so an 8K-token prompt needs ~100 MB of scores at a time instead of
the full [heads, T, T] matrix. The RoPE layout must match how the Q/K weights
were loaded (see gguf_weights.py): "half" rotates dims (i, i + d/2) like
Hugging Face's rotate_half, "interleaved" rotates (2i, 2i+1) like llama.cpp.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .gguf_weights import LlamaWeights


class KVCache:
    """Post-RoPE keys and values of every layer, [kv_heads, capacity, head_dim]."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int):
        shape = (num_kv_heads, capacity, head_dim)
        self.k = [np.zeros(shape, np.float32) for _ in range(num_layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(num_layers)]
        self.length = 0  # positions [0, length) are filled in every layer


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(var + eps)) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class LlamaNumpy:
    def __init__(self, weights: LlamaWeights, query_block: int = 512):
        self.w = weights
        self.cfg = weights.config
        self.query_block = query_block
        d = self.cfg.head_dim
        # Angles in float64, then cast: keeps RoPE accurate at 8K positions.
        self.inv_freq = self.cfg.rope_theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        # cos/sin of every position up to the context length, computed once:
        # [positions, head_dim / 2] each, float32.
        ang = np.arange(max(self.cfg.context_length, 1), dtype=np.float64)[:, None] * self.inv_freq
        self.rope_cos = np.cos(ang).astype(np.float32)
        self.rope_sin = np.sin(ang).astype(np.float32)

    def new_cache(self, capacity: int) -> KVCache:
        c = self.cfg
        return KVCache(c.num_layers, c.num_kv_heads, c.head_dim, capacity)

    def rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Rotate x [heads, L, head_dim] for the given absolute positions [L]."""
        positions = np.asarray(positions)
        if positions.size and positions.max() < len(self.rope_cos):
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        else:
            ang = positions.astype(np.float64)[:, None] * self.inv_freq[None, :]
            cos = np.cos(ang).astype(np.float32)
            sin = np.sin(ang).astype(np.float32)
        half = x.shape[-1] // 2
        out = np.empty_like(x)
        if self.w.rope_layout == "half":
            x1, x2 = x[..., :half], x[..., half:]
            out[..., :half] = x1 * cos - x2 * sin
            out[..., half:] = x2 * cos + x1 * sin
        else:
            x1, x2 = x[..., 0::2], x[..., 1::2]
            out[..., 0::2] = x1 * cos - x2 * sin
            out[..., 1::2] = x2 * cos + x1 * sin
        return out

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
        """Causal GQA. q [H, L, d] at positions start..start+L-1; k, v [Hkv, start+L, d]."""
        H, L, d = q.shape
        hkv = k.shape[0]
        group = H // hkv  # query head h uses kv head h // group
        qg = q.reshape(hkv, group, L, d)
        out = np.empty((hkv, group, L, d), np.float32)
        scale = np.float32(1.0 / np.sqrt(d))
        for b0 in range(0, L, self.query_block):
            b1 = min(L, b0 + self.query_block)
            kend = start + b1  # the last query of the block sees keys [0, kend)
            qb = qg[:, :, b0:b1].reshape(hkv, group * (b1 - b0), d)
            s = np.matmul(qb, k[:, :kend].transpose(0, 2, 1)) * scale
            s = s.reshape(hkv, group, b1 - b0, kend)
            qpos = np.arange(start + b0, start + b1)[:, None]
            s = np.where(np.arange(kend)[None, :] <= qpos, s, np.float32(-np.inf))
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            ob = np.matmul(s.reshape(hkv, group * (b1 - b0), kend), v[:, :kend])
            out[:, :, b0:b1] = ob.reshape(hkv, group, b1 - b0, d)
        return out.reshape(H, L, d)

    def forward(self, tokens, cache: KVCache, capture_q: dict | None = None,
                capture_positions=(), all_logits: bool = False,
                on_layer: Callable[[int, float], None] | None = None) -> np.ndarray:
        """Run `tokens` at positions cache.length.. and append their K/V to the cache.

        capture_q: if given, capture_q[layer][pos] = post-RoPE query [H, d] for
        each pos in capture_positions that this call computes.
        Returns logits of the last token [vocab], or of all tokens [L, vocab].
        """
        c = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        L = len(tokens)
        start = cache.length
        end = start + L
        if end > cache.k[0].shape[1]:
            raise ValueError("KV cache too small")
        positions = np.arange(start, end)
        want = [p for p in capture_positions if start <= p < end]
        x = self.w.embed[tokens]  # [L, hidden]
        for li, lw in enumerate(self.w.layers):
            t0 = time.perf_counter()
            h = rms_norm(x, lw["attn_norm"], c.rms_eps)
            q = (h @ lw["wq"].T).reshape(L, c.num_heads, c.head_dim).transpose(1, 0, 2)
            k = (h @ lw["wk"].T).reshape(L, c.num_kv_heads, c.head_dim).transpose(1, 0, 2)
            v = (h @ lw["wv"].T).reshape(L, c.num_kv_heads, c.head_dim).transpose(1, 0, 2)
            q = self.rope(q, positions)
            cache.k[li][:, start:end] = self.rope(k, positions)
            cache.v[li][:, start:end] = v
            if capture_q is not None and want:
                slot = capture_q.setdefault(li, {})
                for p in want:
                    slot[p] = q[:, p - start].copy()
            a = self.attention(q, cache.k[li][:, :end], cache.v[li][:, :end], start)
            x = x + a.transpose(1, 0, 2).reshape(L, c.hidden) @ lw["wo"].T
            h = rms_norm(x, lw["ffn_norm"], c.rms_eps)
            x = x + (silu(h @ lw["w_gate"].T) * (h @ lw["w_up"].T)) @ lw["w_down"].T
            if on_layer is not None:
                on_layer(li, time.perf_counter() - t0)
        cache.length = end
        xs = x if all_logits else x[-1:]
        logits = rms_norm(xs, self.w.final_norm, c.rms_eps) @ self.w.lm_head.T
        return logits if all_logits else logits[0]

    def greedy(self, prompt_ids, n_new: int, stop_ids=(), capture_q=None,
               capture_positions=(), feed_last: bool = True, on_layer=None,
               on_token: Callable[[int, int], None] | None = None):
        """Prefill prompt_ids, then generate n_new tokens greedily.

        With feed_last, every generated token (including the last) is fed back
        so the cache ends with len(prompt)+n_new positions. Stops early at a
        token in stop_ids. Returns (generated ids, cache).
        """
        n = len(prompt_ids)
        cache = self.new_cache(n + n_new)
        logits = self.forward(prompt_ids, cache, capture_q, capture_positions, on_layer=on_layer)
        out = []
        for i in range(n_new):
            nxt = int(np.argmax(logits))
            out.append(nxt)
            if on_token is not None:
                on_token(i, nxt)
            if nxt in stop_ids:
                break
            if i + 1 < n_new or feed_last:
                logits = self.forward([nxt], cache, capture_q, capture_positions)
        return out, cache

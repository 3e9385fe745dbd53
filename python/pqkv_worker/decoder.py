"""Lanes that decode in lockstep, each attending its own way (methods.py), one of which
is pqkv: PQCache's decode loop through pqkv-server.

A branch is a prefix (the K/V of positions [0, n) of every layer, computed once with
exact attention: the prompt's prefill) and a set of lanes that continue it, one per
method x budget. All lanes of a branch are at the same position at every step, so one
step runs every projection and MLP of every lane as one matmul per weight ([lanes,
hidden] x weight: on 2 cores a step of 16 lanes costs little more than a step of one),
and only attention is per lane.

A pqkv lane owns a session on the server holding the prefix (uploaded layer by layer
with end_of_prefill, so the server indexes a layer while the next is computed or
uploaded). At every step and layer it sends the layer's query, gets back the k selected
tokens' K/V rows (through the stream's receive buffer), and attends over the sink tokens
+ those rows + the recent window; after the step it appends the new token's K/V of
every layer to the session. It never reads the middle of the context from the prefix:
only sinks and window. The other methods read the prefix (it is the reference's memory).

Not thread-safe: one Decoder per thread.
"""

from __future__ import annotations

import dataclasses
import time
from typing import List, Optional, Sequence

import numpy as np

import pqkv

from .llama_numpy import LlamaNumpy, rms_norm, silu
from .methods import (QUEST_PAGE_TOKENS, MethodSpec, oracle_topk, quest_bounds, quest_select,
                      softmax_last)


class Prefix:
    """K/V of positions [0, n) of every layer: [kv_heads, n, head_dim] float32 each
    (views into a KVCache are fine). Read-only; shared by a branch's lanes."""

    def __init__(self, keys: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> None:
        self.k = list(keys)
        self.v = list(values)
        self.n = self.k[0].shape[1]

    @staticmethod
    def of_cache(cache, n: Optional[int] = None) -> "Prefix":
        n = cache.length if n is None else n
        return Prefix([k[:, :n] for k in cache.k], [v[:, :n] for v in cache.v])


@dataclasses.dataclass
class Lane:
    """One method x budget continuing a prefix. tail_k/tail_v hold the positions decoded
    so far (position prefix.n + i at index i)."""

    spec: MethodSpec
    k: int  # tokens chosen per kv head per step (0 for full)
    tail_k: List[np.ndarray]
    tail_v: List[np.ndarray]
    session: Optional[pqkv.Session] = None
    owns_session: bool = True  # False: a shared session, never appended to or closed here
    steps: int = 0
    roundtrip_us: List[float] = dataclasses.field(default_factory=list)
    data_path: str = ""


class Decoder:
    """Runs lanes of `model` against `client` (None: no pqkv lanes allowed).

    sinks, window: S and W; the server's sessions are created with the same values, so
    pqkv's candidates are [S, n - W) as everyone else's. dtype: the sessions' K/V element
    type (queries are float32)."""

    def __init__(self, model: LlamaNumpy, client: Optional[pqkv.Client] = None, *,
                 sinks: int = 4, window: int = 64, dtype: str = "fp16",
                 data_path: str = "auto") -> None:
        if model.w.rope_layout != "half":
            raise ValueError("the decoder expects the Hugging Face (half) RoPE layout")
        self.model = model
        self.cfg = model.cfg
        self.client = client
        self.sinks = sinks
        self.window = window
        self.dtype = dtype
        self.group = self.cfg.num_heads // self.cfg.num_kv_heads
        self.scale = np.float32(1.0 / np.sqrt(self.cfg.head_dim))
        self.shape = pqkv.ModelShape(self.cfg.num_layers, self.cfg.num_kv_heads,
                                     self.cfg.num_heads, self.cfg.head_dim, dtype)
        self._np_dtype = {"fp16": np.float16, "fp32": np.float32}[dtype]
        self._stream = client.retrieval_stream(data_path=data_path) if client else None
        self.prefix: Optional[Prefix] = None
        self._quest_cache: dict = {}  # (id(prefix), layer) -> its whole pages' bounds
        # Where the candidates end, when fixed (shared sessions: the context's length - W);
        # None: at pos - W, the session growing with every step.
        self.frozen_end: Optional[int] = None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    # -- lanes ------------------------------------------------------------------------

    def create_lanes(self, specs: Sequence[MethodSpec], context_tokens: int,
                     max_steps: int, shared: Optional[dict] = None) -> List[Lane]:
        """Lanes for `specs` (k from context_tokens), room for max_steps tokens each; a
        pqkv lane's session is created here, empty: upload_layer fills it. With `shared`
        (share_sessions), pqkv lanes use those sessions instead and append nothing."""
        c = self.cfg
        lanes = []
        for spec in specs:
            shape = (c.num_kv_heads, max_steps, c.head_dim)
            lane = Lane(spec, spec.k_for(context_tokens),
                        [np.zeros(shape, np.float32) for _ in range(c.num_layers)],
                        [np.zeros(shape, np.float32) for _ in range(c.num_layers)])
            if spec.uses_pqkv and shared is not None:
                lane.session = shared[_index_key(spec)]
                lane.owns_session = False
            elif spec.uses_pqkv:
                if self.client is None:
                    raise ValueError(f"{spec.label} needs a pqkv client")
                lane.session = self._new_session(spec)
            lanes.append(lane)
        return lanes

    def _new_session(self, spec: MethodSpec) -> pqkv.Session:
        index = pqkv.IndexOptions(subspaces=spec.subspaces, bits=spec.bits,
                                  sink_tokens=self.sinks, recent_window=self.window,
                                  rope_pairs=spec.rope_pairs or None)
        return self.client.create_session(self.shape, index)

    def share_sessions(self, specs: Sequence[MethodSpec], prefix: Prefix) -> dict:
        """One session per distinct index setting among the pqkv specs, holding `prefix`
        (uploaded layer by layer), for branches that all continue the same context by a
        few tokens: their lanes keep the branch's tokens in the recent window and append
        nothing, and every lane's candidates end at prefix.n - W (frozen_end)."""
        shared = {}
        for spec in specs:
            if spec.uses_pqkv and _index_key(spec) not in shared:
                shared[_index_key(spec)] = self._new_session(spec)
        for layer in range(self.cfg.num_layers):
            k = np.ascontiguousarray(prefix.k[layer], self._np_dtype)
            v = np.ascontiguousarray(prefix.v[layer], self._np_dtype)
            for session in shared.values():
                session.upload_prefill(layer, k, v)
        return shared

    def upload_layer(self, lanes: Sequence[Lane], layer: int, keys: np.ndarray,
                     values: np.ndarray) -> None:
        """Uploads one layer's prefix K/V [kv_heads, n, head_dim] to every pqkv lane's
        session with end_of_prefill: the server starts indexing that layer at once."""
        sessions = [lane.session for lane in lanes
                    if lane.session is not None and lane.owns_session]
        if not sessions:
            return
        k = np.ascontiguousarray(keys, self._np_dtype)
        v = np.ascontiguousarray(values, self._np_dtype)
        for session in sessions:
            session.upload_prefill(layer, k, v)

    def start(self, lanes: Sequence[Lane], prefix: Prefix, upload: bool = True) -> None:
        """Makes `prefix` the lanes' shared past; uploads it layer by layer unless it was
        uploaded already (upload_layer during the prefill)."""
        self.prefix = prefix
        self._quest_cache.clear()
        if upload:
            for layer in range(self.cfg.num_layers):
                self.upload_layer(lanes, layer, prefix.k[layer], prefix.v[layer])

    def close_lanes(self, lanes: Sequence[Lane]) -> None:
        for lane in lanes:
            if lane.session is not None and lane.owns_session:
                lane.session.close()
            lane.session = None

    # -- one step ---------------------------------------------------------------------

    def step(self, lanes: Sequence[Lane], tokens: Sequence[int]) -> np.ndarray:
        """Feeds tokens[b] to lane b at the lanes' common position and returns the next
        token's logits [lanes, vocab] (float32)."""
        c, w = self.cfg, self.model.w
        steps = {lane.steps for lane in lanes}
        if len(steps) != 1:
            raise ValueError("the lanes of one step must be at the same position")
        i = steps.pop()
        n = self.prefix.n
        pos = n + i
        B, H, Hkv, d = len(lanes), c.num_heads, c.num_kv_heads, c.head_dim
        cos, sin = self.model.rope_cos[pos], self.model.rope_sin[pos]
        half = d // 2
        x = w.embed[np.asarray(tokens, np.int64)]  # [B, hidden]
        attn = np.empty((B, H, d), np.float32)
        for li, lw in enumerate(w.layers):
            h = rms_norm(x, lw["attn_norm"], c.rms_eps)
            qkv = h @ lw["wqkv"].T
            q = qkv[:, :H * d].reshape(B, H, d)
            k = qkv[:, H * d:(H + Hkv) * d].reshape(B, Hkv, d)
            v = qkv[:, (H + Hkv) * d:].reshape(B, Hkv, d)
            q = np.concatenate([q[..., :half] * cos - q[..., half:] * sin,
                                q[..., half:] * cos + q[..., :half] * sin], axis=-1)
            k = np.concatenate([k[..., :half] * cos - k[..., half:] * sin,
                                k[..., half:] * cos + k[..., :half] * sin], axis=-1)
            for b, lane in enumerate(lanes):
                lane.tail_k[li][:, i] = k[b]
                lane.tail_v[li][:, i] = v[b]
                attn[b] = self._attend(lane, li, q[b], pos).reshape(H, d)
            x = x + attn.reshape(B, H * d) @ lw["wo"].T
            h = rms_norm(x, lw["ffn_norm"], c.rms_eps)
            gu = h @ lw["w_gate_up"].T
            x = x + (silu(gu[:, :c.ffn]) * gu[:, c.ffn:]) @ lw["w_down"].T
        for lane in lanes:
            if lane.session is not None and lane.owns_session:
                keys = np.stack([t[:, i] for t in lane.tail_k]).astype(self._np_dtype)
                values = np.stack([t[:, i] for t in lane.tail_v]).astype(self._np_dtype)
                lane.session.append_token(pos, keys, values)
            lane.steps += 1
        return rms_norm(x, w.final_norm, c.rms_eps) @ w.lm_head.T

    # -- attention per lane -----------------------------------------------------------

    def _rows(self, lane: Lane, layer: int, begin: int, end: int, values: bool = False):
        """K (or V) of positions [begin, end): [kv_heads, end - begin, d]."""
        n = self.prefix.n
        past = (self.prefix.v if values else self.prefix.k)[layer]
        tail = (lane.tail_v if values else lane.tail_k)[layer]
        if end <= n:
            return past[:, begin:end]
        if begin >= n:
            return tail[:, begin - n:end - n]
        return np.concatenate([past[:, begin:], tail[:, :end - n]], axis=1)

    def _logits(self, lane: Lane, layer: int, qg: np.ndarray, pos: int) -> np.ndarray:
        """Exact scaled logits of the group queries [kv, g, d] over positions [0, pos]."""
        n = self.prefix.n
        past = np.matmul(qg, self.prefix.k[layer].transpose(0, 2, 1))
        tail = np.matmul(qg, lane.tail_k[layer][:, :pos + 1 - n].transpose(0, 2, 1))
        return np.concatenate([past, tail], axis=-1) * self.scale

    def _weighted(self, lane: Lane, layer: int, p: np.ndarray, pos: int) -> np.ndarray:
        """p [kv, g, pos + 1] (attention weights over [0, pos]) times V: [kv, g, d]."""
        n = self.prefix.n
        return (np.matmul(p[..., :n], self.prefix.v[layer]) +
                np.matmul(p[..., n:], lane.tail_v[layer][:, :pos + 1 - n]))

    def _quest_bounds(self, lane: Lane, layer: int, begin: int, end: int):
        """quest_bounds of candidates [begin, end), the prefix's whole pages computed once
        per prefix and layer (they never change), only the edges at every step."""
        P = QUEST_PAGE_TOKENS
        key = (id(self.prefix), layer)
        if key not in self._quest_cache:
            full = self.prefix.n // P * P
            self._quest_cache[key] = quest_bounds(np.ascontiguousarray(
                self.prefix.k[layer][:, :full]), 0, full) if full else None
        cached = self._quest_cache[key]
        a = -(-begin // P)  # the first page wholly inside [begin, end)
        b = min(end // P, 0 if cached is None else cached[0].shape[1])  # cached, whole
        if b - a < 1:
            return quest_bounds(self._rows(lane, layer, begin, end), begin, end)
        los, his = [], []
        if begin < a * P:
            lo, hi = quest_bounds(self._rows(lane, layer, begin, a * P), begin, a * P)
            los.append(lo)
            his.append(hi)
        los.append(cached[0][:, a:b])
        his.append(cached[1][:, a:b])
        if b * P < end:
            lo, hi = quest_bounds(self._rows(lane, layer, b * P, end), b * P, end)
            los.append(lo)
            his.append(hi)
        return np.concatenate(los, axis=1), np.concatenate(his, axis=1)

    def _attend_rows(self, qg: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        p = softmax_last(np.matmul(qg, keys.transpose(0, 2, 1)) * self.scale)
        return np.matmul(p, values)

    def _attend(self, lane: Lane, layer: int, q: np.ndarray, pos: int) -> np.ndarray:
        """Lane's attention output for one layer: q [H, d] -> [kv, g, d]."""
        S, W = self.sinks, self.window
        qg = q.reshape(self.cfg.num_kv_heads, self.group, -1)
        name = lane.spec.name
        if name == "full":
            return self._weighted(lane, layer, softmax_last(self._logits(lane, layer, qg, pos)),
                                  pos)
        # The candidates, as the server has them.
        begin, end = S, pos - W if self.frozen_end is None else self.frozen_end
        if end - begin < lane.k:
            raise ValueError(f"{end - begin} candidates at position {pos}, k = {lane.k}")
        if name == "streaming":
            lo = max(begin, end - lane.k)
            keys = np.concatenate([self._rows(lane, layer, 0, S),
                                   self._rows(lane, layer, lo, pos + 1)], axis=1)
            values = np.concatenate([self._rows(lane, layer, 0, S, True),
                                     self._rows(lane, layer, lo, pos + 1, True)], axis=1)
            return self._attend_rows(qg, keys, values)
        if lane.spec.uses_pqkv:
            t0 = time.perf_counter()
            (result,) = self._stream.retrieve(layer, [pqkv.Query(
                lane.session, q, lane.k, with_kv=True, rerank=lane.spec.rerank,
                with_scores=False)])
            lane.roundtrip_us.append((time.perf_counter() - t0) * 1e6)
            if result.error is not None:
                raise result.error
            lane.data_path = result.data_path
            keys = np.concatenate([self._rows(lane, layer, 0, S),
                                   result.keys.astype(np.float32),
                                   self._rows(lane, layer, end, pos + 1)], axis=1)
            values = np.concatenate([self._rows(lane, layer, 0, S, True),
                                     result.values.astype(np.float32),
                                     self._rows(lane, layer, end, pos + 1, True)], axis=1)
            return self._attend_rows(qg, keys, values)
        logits = self._logits(lane, layer, qg, pos)
        if name == "oracle":
            chosen = oracle_topk(logits, begin, end, lane.k)
        elif name == "quest":
            lo, hi = self._quest_bounds(lane, layer, begin, end)
            chosen = quest_select(lo, hi, qg, begin, end, lane.k)
        else:
            raise ValueError(f"unknown method {name}")
        keep = np.zeros(logits.shape[::2], bool)  # [kv, pos + 1]
        keep[:, :S] = True
        keep[:, end:] = True
        np.put_along_axis(keep, chosen, True, axis=1)
        logits = np.where(keep[:, None, :], logits, np.float32(-np.inf))
        return self._weighted(lane, layer, softmax_last(logits), pos)


def _index_key(spec: MethodSpec) -> tuple:
    return (spec.subspaces, spec.bits, spec.rope_pairs)

"""What a decode lane attends to, per method, and how the non-pqkv methods choose.

Every method but `full` attends to the same number of tokens: the S sink tokens and the
recent window (the last W tokens and the current one), which the worker keeps, plus k
tokens of the method's choice among the candidates [S, n - W), n being the tokens
before the current one (the same range pqkv-server selects from with sink_tokens = S and
recent_window = W).

| method | the k tokens |
| --- | --- |
| `full` | none: exact attention over every token (the reference) |
| `pqkv` | pqkv-server's top-k, default index (2 sub-spaces x 6 bits, exact re-rank of 4k) |
| `pqkv-recommended` | 4 sub-spaces x 8 bits, RoPE pairs kept together, exact re-ranking of 4k |
| `oracle` | the exact top-k of the GQA score (sum over the group of softmax over candidates) |
| `streaming` | StreamingLLM: none searched, the recent window widened by k |
| `quest` | Quest: 16-token pages by per-channel key min/max bound, best pages until k tokens |

A budget below 1 is a fraction of the context's tokens (k = round(budget x context));
1 or more is k itself.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

METHODS = ("full", "pqkv", "pqkv-recommended", "oracle", "streaming", "quest")
QUEST_PAGE_TOKENS = 16


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One lane's method and budget. subspaces/bits/rope_pairs/rerank only for pqkv."""

    name: str
    budget: Optional[float] = None  # None for full
    subspaces: int = 0
    bits: int = 0
    rope_pairs: bool = False
    rerank: int = 0

    @property
    def label(self) -> str:
        return self.name if self.budget is None else f"{self.name}@{self.budget:g}"

    @property
    def uses_pqkv(self) -> bool:
        return self.name.startswith("pqkv")

    def k_for(self, context_tokens: int) -> int:
        if self.budget is None:
            return 0
        if self.budget >= 1:
            return int(self.budget)
        return max(1, int(round(self.budget * context_tokens)))


def method_spec(name: str, budget: Optional[float], subspaces: int = 0, bits: int = 0,
                rope_pairs: bool = False, rerank: int = 0) -> MethodSpec:
    """The spec for a method name. `pqkv` takes the index options given (0: the server's
    default, one 4-bit sub-space per dimension); `pqkv-recommended` is 4 x 8 + RoPE
    pairs + rerank 4."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    if name == "full":
        return MethodSpec("full")
    if budget is None or budget <= 0:
        raise ValueError(f"method {name} needs a budget > 0")
    if name == "pqkv-recommended":
        return MethodSpec(name, budget, subspaces=4, bits=8, rope_pairs=True, rerank=4)
    if name == "pqkv":
        return MethodSpec(name, budget, subspaces=subspaces, bits=bits, rope_pairs=rope_pairs,
                          rerank=rerank)
    return MethodSpec(name, budget)


def method_specs(names: Sequence[str], budgets: Sequence[float]) -> List[MethodSpec]:
    """Every method x budget (full once)."""
    out = []
    for name in names:
        if name == "full":
            out.append(method_spec("full", None))
        else:
            out.extend(method_spec(name, b) for b in budgets)
    return out


def softmax_last(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def oracle_topk(logits: np.ndarray, begin: int, end: int, k: int) -> np.ndarray:
    """Exact top-k per kv head among candidates [begin, end).

    logits: [kv_heads, group, tokens] (already scaled by 1/sqrt(d)). The GQA score of a
    token is the sum over the group's query heads of softmax over the candidates.
    Returns positions [kv_heads, k] (unordered).
    """
    score = softmax_last(np.array(logits[:, :, begin:end])).sum(axis=1)  # [kv, C]
    part = np.argpartition(-score, k - 1, axis=1)[:, :k]
    return part + begin


def quest_bounds(keys: np.ndarray, begin: int, end: int,
                 page_tokens: int = QUEST_PAGE_TOKENS):
    """Per-channel min and max of the keys of each page of candidates [begin, end):
    keys [kv_heads, end - begin, d] -> (lo, hi), each [kv_heads, pages, d]. Pages are
    aligned to absolute positions (multiples of page_tokens); edge pages count only their
    candidates."""
    first_page = begin // page_tokens
    starts = [0] + [p * page_tokens - begin
                    for p in range(first_page + 1, (end - 1) // page_tokens + 1)]
    idx = np.asarray(starts)
    return np.minimum.reduceat(keys, idx, axis=1), np.maximum.reduceat(keys, idx, axis=1)


def quest_select(lo: np.ndarray, hi: np.ndarray, q: np.ndarray, begin: int, end: int, k: int,
                 page_tokens: int = QUEST_PAGE_TOKENS) -> np.ndarray:
    """Quest's page selection among candidates [begin, end).

    lo, hi: quest_bounds of the candidates' keys; q: the group's queries [kv_heads, group,
    d]. A page's bound for a query head is sum_i max(q_i lo_i, q_i hi_i) / sqrt(d); the
    group's bounds are combined as a sum of softmax over pages (as pqkv combines GQA
    scores); pages are taken best first until k tokens (the last one cut short). Returns
    positions [kv_heads, k].
    """
    d = lo.shape[-1]
    first_page = begin // page_tokens
    qe = q[:, :, None, :]  # [kv, g, 1, d]
    bound = np.maximum(qe * lo[:, None], qe * hi[:, None]).sum(-1) / np.sqrt(d)  # [kv, g, P]
    combined = softmax_last(bound).sum(axis=1)  # [kv, P]
    page_begin = np.maximum(begin, (first_page + np.arange(lo.shape[1])) * page_tokens)
    page_end = np.minimum(end, page_begin // page_tokens * page_tokens + page_tokens)
    out = np.empty((lo.shape[0], k), np.int64)
    for h in range(lo.shape[0]):
        order = np.argsort(-combined[h], kind="stable")
        sizes = (page_end - page_begin)[order]
        need = int(np.searchsorted(np.cumsum(sizes), k)) + 1
        chosen = np.concatenate([np.arange(page_begin[p], page_end[p]) for p in order[:need]])
        out[h] = chosen[:k]
    return out

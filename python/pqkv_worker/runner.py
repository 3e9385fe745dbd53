"""The tasks (tasks.py) run on lanes (decoder.py): one prefill per context, one branch per
question, every method x budget a lane of each branch.

A branch starts from the context's K/V: its prompt but the last token is prefilled with
exact attention (PQCache prefills the whole prompt exactly), and the lanes take over
from the prompt's last token, so every answer token is decided by the lane's method.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .decoder import Decoder, Lane, Prefix
from .llama_numpy import KVCache, LlamaNumpy
from .methods import MethodSpec
from .tasks import Context, answer_key


def prefill(model: LlamaNumpy, ids: Sequence[int], capacity: int) -> KVCache:
    """The context's K/V with exact attention, in a cache with room for `capacity`."""
    cache = model.new_cache(capacity)
    model.forward(list(ids), cache)
    return cache


@dataclasses.dataclass
class BranchResult:
    tokens: Dict[str, List[int]]  # label -> its top-1 token at every step
    nll: Dict[str, List[float]]  # label -> -log p(forced next token) per step (forced runs)
    roundtrip_us: Dict[str, List[float]]  # pqkv labels -> per-layer retrieve round trips
    step_seconds: List[float]


def run_branch(decoder: Decoder, cache: KVCache, context_tokens: int, prompt: Sequence[int],
               specs: Sequence[MethodSpec], steps: int,
               forced: Optional[Sequence[int]] = None,
               shared: Optional[dict] = None) -> BranchResult:
    """Continues the context (the first context_tokens positions of `cache`) with `prompt`.

    Greedy when `forced` is None (each lane feeds its own top-1 token), else teacher-forced:
    step j feeds forced[j - 1] and nll scores forced[j]. `steps` steps in all; step 0 feeds
    prompt[-1]. With `shared` (Decoder.share_sessions of the context) pqkv lanes use those
    sessions and every lane's candidates end at context_tokens - W."""
    model = decoder.model
    cache.length = context_tokens
    if len(prompt) > 1:
        model.forward(list(prompt[:-1]), cache)
    lanes = decoder.create_lanes(specs, context_tokens, steps, shared)
    decoder.frozen_end = None if shared is None else context_tokens - decoder.window
    try:
        decoder.start(lanes, Prefix.of_cache(cache))
        feed = [int(prompt[-1])] * len(lanes)
        out = BranchResult({lane.spec.label: [] for lane in lanes},
                           {lane.spec.label: [] for lane in lanes}, {}, [])
        for j in range(steps):
            t0 = time.perf_counter()
            logits = decoder.step(lanes, feed)
            out.step_seconds.append(time.perf_counter() - t0)
            top = logits.argmax(axis=-1)
            for b, lane in enumerate(lanes):
                out.tokens[lane.spec.label].append(int(top[b]))
            if forced is not None:
                target = int(forced[j])
                m = logits.max(axis=-1)
                logz = m + np.log(np.exp(logits - m[:, None]).sum(axis=-1))
                for b, lane in enumerate(lanes):
                    out.nll[lane.spec.label].append(float(logz[b] - logits[b, target]))
                feed = [target] * len(lanes)
            else:
                feed = [int(t) for t in top]
        for lane in lanes:
            if lane.roundtrip_us:
                out.roundtrip_us[lane.spec.label] = lane.roundtrip_us
        return out
    finally:
        decoder.frozen_end = None
        decoder.close_lanes(lanes)


ANSWER_STEPS = 8  # the question's last token, then " 12345." and one more


def passkey_answers(decoder: Decoder, cache: KVCache, context: Context,
                    specs: Sequence[MethodSpec], tok) -> List[Dict[str, object]]:
    """Per key: {"key", "depth", "answers": {label: text}, "correct": {label: bool},
    "roundtrip_us": {label: [...]}}.

    The keys' branches share one prefill and, per pqkv index setting, one session holding
    the context (uploaded and indexed once): the question and answer tokens stay in every
    lane's recent window (at most 32 of them), and the candidates are [S, N - W) for
    every method, N being the context's length."""
    out = []
    n = len(context.ids)
    cache.length = n
    shared = decoder.share_sessions(specs, Prefix.of_cache(cache, n))
    try:
        for pk in context.passkeys:
            out.append(_passkey(decoder, cache, n, pk, specs, tok, shared))
    finally:
        for session in shared.values():
            session.close()
    return out


def _passkey(decoder: Decoder, cache: KVCache, n: int, pk, specs: Sequence[MethodSpec], tok,
             shared: dict) -> Dict[str, object]:
    r = run_branch(decoder, cache, n, pk.question, specs, ANSWER_STEPS, shared=shared)
    answers = {label: tok.decode(ids) for label, ids in r.tokens.items()}
    return {"key": pk.key, "depth": pk.depth, "answers": answers,
            "correct": {label: answer_key(a) == pk.key for label, a in answers.items()},
            "roundtrip_us": r.roundtrip_us, "step_seconds": r.step_seconds}


def copy_run(decoder: Decoder, cache: KVCache, context: Context,
             specs: Sequence[MethodSpec]) -> BranchResult:
    """Teacher-forced continuation of the copy passage: step j predicts passage[8 + j]."""
    shown = len(context.copy_prompt) - 1  # the newline + 8 passage tokens
    rest = context.copy_passage[shown:]  # tokens 9..64 of the passage
    return run_branch(decoder, cache, len(context.ids), context.copy_prompt, specs, len(rest),
                      forced=rest)


def agreement_run(decoder: Decoder, cache: KVCache, context: Context,
                  specs: Sequence[MethodSpec]) -> BranchResult:
    """Teacher-forced continuation of the text: step j feeds continuation[j] and predicts
    continuation[j + 1]."""
    cont = context.continuation
    return run_branch(decoder, cache, len(context.ids), cont[:1], specs, len(cont) - 1,
                      forced=cont[1:])

"""Task contexts built from real text shipped in the repository.

The text is tools/capture/prompts/gpl-3.0+apache-2.0.txt: the GPL-3 text then the
Apache-2.0 text, both verbatim (each licence permits verbatim copies of itself), 9854
SmolLM2 tokens. One context of N tokens serves every task at a length (one prefill):

- passkey: sentences "The pass key for the <label> is <5 digits>." inserted at depths
  spread over 10%..90% of the context (after a line break); one question per key is
  appended to the shared context: "What is the pass key for the <label>? The pass key
  for the <label> is". Exact match of the key in the greedy answer.
- copy: a passage of 64 tokens of random words, inserted early (5% depth); its first 8
  tokens are appended at the end and the model continues it teacher-forced: token
  accuracy of its top-1 predictions of tokens 9..64 (induction through the context).
- agreement: the next 257 tokens of the text after the context, teacher-forced: top-1
  agreement of each method with full attention and the continuation's mean NLL.

Inserted sentences go at token boundaries after a newline token of the text, so the text
around them stays whole lines. Everything is a function of (tokenizer, length, seed).
"""

from __future__ import annotations

import dataclasses
import os
from typing import List

import numpy as np

TEXT_RELATIVE = os.path.join("tools", "capture", "prompts", "gpl-3.0+apache-2.0.txt")


def _text_path() -> str:
    """The text beside this package (python/pqkv_worker -> the repository, or Bazel's
    runfiles root), else where the package really is (a symlinked tree)."""
    for here in (os.path.abspath(__file__), os.path.realpath(__file__)):
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(here))),
                            TEXT_RELATIVE)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{TEXT_RELATIVE} not found beside {__file__}")


TEXT_PATH = _text_path()
LABELS = ("red door", "blue box", "green gate", "old bridge", "silver ring", "north tower",
          "small boat", "east garden", "yellow lamp")
COPY_TOKENS = 64
COPY_SHOWN = 8
CONTINUATION_TOKENS = 257  # fed 256, predicted 256 (tokens 1..256)
# Positions a context leaves free for the longest branch: the continuation.
RESERVED_TOKENS = CONTINUATION_TOKENS + 7


@dataclasses.dataclass
class Passkey:
    label: str
    key: str
    depth: float  # of the context, where its sentence starts
    question: List[int]  # token ids appended after the context


@dataclasses.dataclass
class Context:
    ids: List[int]  # the context, N tokens
    passkeys: List[Passkey]
    copy_passage: List[int]  # COPY_TOKENS ids, inserted at copy_depth
    copy_depth: float
    copy_prompt: List[int]  # a newline + the passage's first COPY_SHOWN tokens
    continuation: List[int]  # the text's next CONTINUATION_TOKENS tokens


def read_text(path: str = TEXT_PATH) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def build_context(tok, length: int, num_keys: int = 5, seed: int = 0,
                  text: str | None = None) -> Context:
    """A context of length - RESERVED_TOKENS tokens (so that every branch fits in
    `length` positions) with num_keys passkeys and one copy passage."""
    rng = np.random.default_rng(seed)
    text_ids = tok.encode(text if text is not None else read_text(), add_special=False)
    n = length - RESERVED_TOKENS
    depths = np.linspace(0.1, 0.9, num_keys) if num_keys > 1 else np.array([0.5])
    keys = [str(int(rng.integers(10000, 100000))) for _ in range(num_keys)]
    labels = [LABELS[i % len(LABELS)] for i in range(num_keys)]
    inserts = [(float(dep), tok.encode(f"The pass key for the {label} is {key}.\n",
                                       add_special=False))
               for dep, label, key in zip(depths, labels, keys)]
    words = sorted({w.strip(".,;:()\"'") for w in read_text().split()} - {""})
    passage = tok.encode(" " + " ".join(rng.choice(words, COPY_TOKENS)), add_special=False)
    passage = passage[:COPY_TOKENS]
    copy_depth = 0.05
    inserts.append((copy_depth, passage + tok.encode("\n", add_special=False)))
    inserted = sum(len(ids) for _, ids in inserts)
    body = text_ids[:n - inserted]
    if len(text_ids) < n - inserted + CONTINUATION_TOKENS:
        raise ValueError(f"the text has {len(text_ids)} tokens: too few for length {length}")
    newline_at = [i for i, t in enumerate(body) if "\n" in tok.decode([t])]
    out: List[int] = []
    cut = 0
    for dep, ids in sorted(inserts):
        # After the first newline at or past the depth.
        target = int(dep * len(body))
        after = next((i + 1 for i in newline_at if i >= target), target)
        out += body[cut:after] + ids
        cut = after
    out += body[cut:]
    assert len(out) == n, (len(out), n)
    passkeys = [Passkey(label, key, dep, tok.encode(
        f"\nWhat is the pass key for the {label}? The pass key for the {label} is",
        add_special=False)) for dep, label, key in zip(depths, labels, keys)]
    return Context(ids=out, passkeys=passkeys, copy_passage=passage, copy_depth=copy_depth,
                   copy_prompt=tok.encode("\n", add_special=False) + passage[:COPY_SHOWN],
                   continuation=text_ids[n - inserted:n - inserted + CONTINUATION_TOKENS])


def answer_key(text: str) -> str:
    """The first run of digits in a greedy answer ("" if none)."""
    digits = ""
    for ch in text:
        if ch.isdigit():
            digits += ch
        elif digits:
            break
    return digits

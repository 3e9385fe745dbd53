"""pqkv.Client and pqkv.Session: sessions, K/V upload and fetch."""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import _arrays, _native
from .retrieval import RetrievalStream
from .types import IndexOptions, ModelShape, ServerStats, SessionInfo


class Client:
    """A connection to one pqkv server, or to several (sessions placed on them by
    rendezvous hashing of the session id, as in the C++ SDK).

    Args:
        address: "host:port", a list of them, or a comma-separated string of them.
        token: bearer token for servers started with --auth_tokens_file.
        tls: True for TLS with the system's root CAs, or a dict with any of
            `root_certs`, `client_cert`, `client_key` (PEM text or paths to PEM files)
            and `server_name` (the name to check the certificate against).
        timeout: seconds allowed to unary calls (create, close, fetch, info).
        connect_timeout: seconds to wait for every server to become reachable.
        resolve_all_addresses: with one "name:port", spread sessions over every
            address the name resolves to (a headless Kubernetes Service).
        upload_chunk_bytes: target size of one upload message (0: the SDK's 1 MiB).

    Thread safety: a Client may be shared by threads; every blocking call releases the
    GIL. Use it as a context manager, or call close(), to drop the connection.

    Example:
        with pqkv.Client("localhost:50051") as client:
            session = client.create_session(pqkv.ModelShape(32, 8, 32, 128, "fp16"))
            session.upload_prefill(0, keys, values)
    """

    def __init__(self, address: Union[str, Sequence[str]], *, token: Optional[str] = None,
                 tls: Union[bool, Mapping[str, str], None] = None, timeout: float = 60.0,
                 connect_timeout: float = 10.0, resolve_all_addresses: bool = False,
                 upload_chunk_bytes: int = 0) -> None:
        target = address if isinstance(address, str) else ",".join(address)
        tls_options = _tls_options(tls)
        self._native: Optional[_native.Client] = _native.Client(
            target=target, token=token or "", tls=bool(tls),
            tls_root_certs=tls_options.get("root_certs", ""),
            tls_client_cert=tls_options.get("client_cert", ""),
            tls_client_key=tls_options.get("client_key", ""),
            tls_server_name=tls_options.get("server_name", ""),
            resolve_all_addresses=resolve_all_addresses, call_timeout_s=float(timeout),
            connect_timeout_s=float(connect_timeout), upload_chunk_bytes=int(upload_chunk_bytes))
        self.address = target
        # Shapes of the sessions this client has seen: retrieve() needs them per query.
        self._shapes: Dict[str, ModelShape] = {}

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Drops this object's hold on the connection. Open retrieval streams keep it
        until they are closed too."""
        self._native = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def _live(self) -> "_native.Client":
        """The native client, or ValueError once closed."""
        if self._native is None:
            raise ValueError("the client is closed")
        return self._native

    # -- sessions ---------------------------------------------------------------------

    def create_session(self, shape: ModelShape, index: IndexOptions = IndexOptions(),
                       session_id: Optional[str] = None) -> "Session":
        """Creates a session for one sequence and returns it. session_id: None for a
        random one. Raises AlreadyExists if the id is taken, InvalidArgument for a bad
        shape or index option, ResourceExhausted when the server's budget is full."""
        session_id = self._live.create_session(session_id or "", shape._to_native(),
                                               index._to_native())
        self._shapes[session_id] = shape
        return Session(self, session_id, shape)

    def session(self, session_id: str) -> "Session":
        """A handle on an existing session (created by this or another client).
        Raises NotFound if there is none."""
        return Session(self, session_id, self.get_session(session_id).shape)

    def get_session(self, session_id: str) -> SessionInfo:
        """What the server holds for a session, layer by layer. Raises NotFound."""
        info = SessionInfo._from_native(self._live.get_session(session_id))
        self._shapes[session_id] = info.shape
        return info

    def list_sessions(self) -> List[SessionInfo]:
        """Every session on every server (without per-layer details)."""
        return [SessionInfo._from_native(info) for info in self._live.list_sessions()]

    def close_session(self, session: Union["Session", str]) -> None:
        """Frees a session's K/V and indexes. Raises NotFound if it is already gone."""
        session_id = _session_id(session)
        self._shapes.pop(session_id, None)
        self._live.close_session(session_id)

    def server_stats(self) -> ServerStats:
        """Totals over every server (backend and version of the first)."""
        return ServerStats(**self._live.server_stats())

    def endpoint_stats(self) -> List[ServerStats]:
        """One entry per server, in the order they were given."""
        return [ServerStats(**stats) for stats in self._live.endpoint_stats()]

    def endpoint_for(self, session: Union["Session", str]) -> str:
        """The server that holds (or would hold) a session."""
        return self._live.endpoint_for(_session_id(session))

    # -- retrieval --------------------------------------------------------------------

    def retrieval_stream(self, *, data_path: str = "auto",
                         receive_buffer_bytes: int = 64 << 20,
                         buffer_regions: int = 2) -> RetrievalStream:
        """Opens a Retrieve stream: one request per layer per decode step.

        data_path: "auto" (UCX where it runs and the server offers it, else gRPC),
            "ucx" (UCX or an error) or "grpc" (rows always in the responses).
        receive_buffer_bytes: size of the page-locked buffer the server writes rows into.
        buffer_regions: the buffer is split into this many regions, used in turn by
            successive retrieve calls; a call's row views stay valid until that many
            further calls have run (see RetrieveResult).
        """
        return RetrievalStream(self._live.open_stream(data_path, int(receive_buffer_bytes)),
                               self._shape_of, buffer_regions)

    def _shape_of(self, session: Union["Session", str]) -> ModelShape:
        if isinstance(session, Session):
            return session.shape
        shape = self._shapes.get(session)
        return shape if shape is not None else self.get_session(session).shape


class Session:
    """One sequence's K/V on a server. Made by Client.create_session or Client.session.

    K/V arrays are [kv_heads, tokens, head_dim] in the session's dtype: numpy arrays
    (float16, float32; for bf16 ml_dtypes.bfloat16 or uint16 bit patterns) or CPU torch
    tensors, C-contiguous. They are read in place, without a copy. A wrong shape, dtype,
    device or layout raises ValueError saying what was expected.

    Use as a context manager to close the session on exit.
    """

    def __init__(self, client: Client, session_id: str, shape: ModelShape) -> None:
        self.client = client
        self.id = session_id
        self.shape = shape

    def __repr__(self) -> str:
        return f"pqkv.Session({self.id!r}, {self.shape})"

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def info(self) -> SessionInfo:
        return self.client.get_session(self.id)

    def close(self) -> None:
        """Frees the session on the server. Raises NotFound if it is already gone."""
        self.client.close_session(self.id)

    def upload_prefill(self, layer: int, keys: Any, values: Any, token_begin: int = 0,
                       end_of_prefill: bool = True) -> None:
        """Uploads tokens [token_begin, token_begin + tokens) of one layer.

        end_of_prefill: this call completes the layer's prefill and the server starts
        building its index in the background, so upload each layer as soon as it is
        computed. Pass False for all but the last call of a chunked prefill.
        """
        tokens = _arrays.tokens_of("keys", keys)
        shape = (self.shape.num_kv_heads, tokens, self.shape.head_dim)
        keys_at, nbytes = _arrays.kv_buffer("keys", keys, self.shape.dtype, shape)
        values_at, _ = _arrays.kv_buffer("values", values, self.shape.dtype, shape)
        self.client._live.upload_prefill(
            self.id, int(layer), int(token_begin), tokens, keys_at, values_at, nbytes,
            self.shape.row_bytes * self.shape.num_kv_heads, bool(end_of_prefill))

    def append(self, layer: int, position: int, keys: Any, values: Any) -> None:
        """Appends decoded tokens at `position` to one layer: [kv_heads, tokens, head_dim]
        (or [kv_heads, head_dim] for one token). The server encodes them with the layer's
        codebooks. Call it per layer as each layer's new K/V is known."""
        if len(tuple(keys.shape)) == 2:
            keys, values = keys[:, None, :], values[:, None, :]
        self.upload_prefill(layer, keys, values, token_begin=position, end_of_prefill=False)

    def append_token(self, position: int, keys: Any, values: Any) -> None:
        """Appends one decoded token to every layer at once: [layers, kv_heads, head_dim]."""
        shape = (self.shape.num_layers, self.shape.num_kv_heads, self.shape.head_dim)
        keys_at, nbytes = _arrays.kv_buffer("keys", keys, self.shape.dtype, shape)
        values_at, _ = _arrays.kv_buffer("values", values, self.shape.dtype, shape)
        self.client._live.append_token(self.id, int(position), keys_at, values_at, nbytes,
                                       self.shape.row_bytes * shape[0] * shape[1])

    def fetch(self, layer: int, positions: Union[np.ndarray, Mapping[int, Iterable[int]]]):
        """Reads K/V rows back: positions [kv_heads, n] (n per kv head) or a mapping
        {kv_head: positions}. Returns (keys, values), each [heads, n, head_dim] for the
        array form, or [rows, head_dim] (heads in the mapping's order) for a mapping."""
        if isinstance(positions, Mapping):
            heads = [(int(h), [int(p) for p in ps]) for h, ps in positions.items()]
            out_shape: tuple = (sum(len(ps) for _, ps in heads), self.shape.head_dim)
        else:
            array = np.asarray(positions)
            if array.ndim != 2 or array.shape[0] != self.shape.num_kv_heads:
                raise ValueError(f"positions: expected [kv_heads={self.shape.num_kv_heads}, n], "
                                 f"got shape {array.shape}")
            heads = [(h, array[h].astype(np.int64).tolist()) for h in range(array.shape[0])]
            out_shape = (array.shape[0], array.shape[1], self.shape.head_dim)
        dtype = _arrays.numpy_dtype(self.shape.dtype)
        keys = np.empty(out_shape, dtype)
        values = np.empty(out_shape, dtype)
        written = self.client._live.fetch_kv(self.id, int(layer), heads, keys.ctypes.data,
                                             values.ctypes.data, keys.nbytes)
        assert written == keys.nbytes, (written, keys.nbytes)
        return keys, values


def _session_id(session: Union[Session, str]) -> str:
    return session.id if isinstance(session, Session) else str(session)


def _tls_options(tls: Union[bool, Mapping[str, str], None]) -> Dict[str, str]:
    """TLS settings with PEM paths read into PEM text."""
    if not tls or tls is True:
        return {}
    known = {"root_certs", "client_cert", "client_key", "server_name"}
    unknown = set(tls) - known
    if unknown:
        raise ValueError(f"tls: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    options = dict(tls)
    for key in ("root_certs", "client_cert", "client_key"):
        value = options.get(key)
        if value and "-----BEGIN" not in value and os.path.exists(value):
            with open(value, encoding="ascii") as f:
                options[key] = f.read()
    return options

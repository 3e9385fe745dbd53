"""pqkv: the Python SDK of pqkv-server, a PQCache-style key/value cache service for
long-context LLM inference.

A worker uploads each layer's prefill K/V, then at every decode step and layer sends the
layer's query and gets back the tokens to attend to (and their K/V rows, written by the
server straight into the stream's receive buffer where UCX runs):

    import numpy as np, pqkv

    with pqkv.Client("localhost:50051") as client:
        shape = pqkv.ModelShape(num_layers=1, num_kv_heads=8, num_query_heads=32,
                                head_dim=128, dtype="fp16")
        session = client.create_session(shape)
        session.upload_prefill(0, keys, values)          # [kv_heads, tokens, head_dim]
        with client.retrieval_stream() as stream:
            (result,) = stream.retrieve(0, [pqkv.Query(session, q, k=256, with_kv=True)])
            result.positions, result.keys, result.values  # int32 [8, 256]; [8, 256, 128]
        session.close()

Errors are pqkv.Error subclasses named after gRPC codes (pqkv.NotFound, ...).
"""

from . import _native
from .client import Client, Session
from .errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, Error,
                     FailedPrecondition, Internal, InvalidArgument, NotFound, OutOfRange,
                     PermissionDenied, ResourceExhausted, StatusCode, Unauthenticated,
                     Unavailable, Unimplemented, Unknown)
from .retrieval import Query, RetrievalStream, RetrieveResult
from .types import (DType, IndexOptions, IndexState, LayerInfo, ModelShape, ServerStats,
                    SessionInfo)

# The pqkv release, the same as the server's (server/version.h).
__version__: str = _native.version

__all__ = [
    "Client", "Session", "RetrievalStream", "Query", "RetrieveResult", "ModelShape",
    "IndexOptions", "DType", "IndexState", "SessionInfo", "LayerInfo", "ServerStats",
    "Error", "StatusCode", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded",
    "NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted",
    "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented", "Internal",
    "Unavailable", "DataLoss", "Unauthenticated", "__version__",
]

"""Sessions, uploads and fetches through the Python SDK against a real server."""

from __future__ import annotations

import numpy as np
import pytest

import pqkv
from conftest import SHAPE, TOKENS, random_kv, rows_at, same_bits


def test_version_is_the_servers(client):
    assert pqkv.__version__ == client.server_stats().version


def test_create_get_list_close(client):
    index = pqkv.IndexOptions(subspaces=4, bits=6, sink_tokens=16, recent_window=32, rerank=2)
    session = client.create_session(SHAPE, index=index, session_id="py-lifecycle")
    assert session.id == "py-lifecycle"
    keys, values = random_kv("fp16")
    for layer in range(SHAPE.num_layers):
        session.upload_prefill(layer, keys, values)

    info = client.get_session("py-lifecycle")
    assert info.shape == SHAPE
    assert (info.index.subspaces, info.index.bits) == (4, 6)
    assert (info.index.sink_tokens, info.index.recent_window) == (16, 32)
    assert info.index.kmeans_iterations > 0  # the server's default, filled in
    assert info.index.rerank == 2
    assert [layer.num_tokens for layer in info.layers] == [TOKENS] * SHAPE.num_layers
    assert info.bytes_held >= 2 * keys.nbytes * SHAPE.num_layers
    assert all(isinstance(layer.index_state, pqkv.IndexState) for layer in info.layers)

    assert "py-lifecycle" in [s.session_id for s in client.list_sessions()]
    stats = client.server_stats()
    assert stats.num_sessions >= 1 and stats.bytes_held >= info.bytes_held
    assert client.endpoint_stats()[0].endpoint == client.endpoint_for(session)

    handle = client.session("py-lifecycle")
    assert handle.shape == SHAPE
    session.close()
    with pytest.raises(pqkv.NotFound):
        client.get_session("py-lifecycle")
    assert "py-lifecycle" not in [s.session_id for s in client.list_sessions()]


def test_default_index_and_rerank_are_filled_in_and_bounded(client):
    with client.create_session(SHAPE) as session:
        # The server's default: one 4-bit sub-space per dimension, no re-rank.
        index = client.get_session(session.id).index
        assert (index.subspaces, index.bits, index.rerank) == (SHAPE.head_dim, 4, 1)
    with client.create_session(SHAPE, index=pqkv.IndexOptions(subspaces=2, bits=6)) as session:
        assert client.get_session(session.id).index.rerank == 4  # PQCache's 2 x 6 re-ranks
    with pytest.raises(pqkv.InvalidArgument, match="index.rerank"):
        client.create_session(SHAPE, index=pqkv.IndexOptions(rerank=65))


def test_session_context_manager_closes(client):
    with client.create_session(SHAPE) as session:
        session_id = session.id
        assert session_id  # a server-chosen id
    with pytest.raises(pqkv.NotFound):
        client.get_session(session_id)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_fetch_returns_uploaded_bits(client, dtype):
    shape = pqkv.ModelShape(2, 2, 4, 64, dtype)
    with client.create_session(shape) as session:
        keys, values = random_kv(dtype, shape)
        session.upload_prefill(1, keys, values)
        positions = np.array([[0, 5, 511, 7], [3, 3, 200, 100]])
        got_keys, got_values = session.fetch(1, positions)
        assert same_bits(got_keys, rows_at(keys, positions))
        assert same_bits(got_values, rows_at(values, positions))
        mapped_keys, _ = session.fetch(1, {1: [9, 10]})
        assert same_bits(mapped_keys, keys[1, [9, 10]])


def test_chunked_prefill_and_appends(client):
    with client.create_session(SHAPE) as session:
        keys, values = random_kv("fp16")
        session.upload_prefill(0, np.ascontiguousarray(keys[:, :200]),
                               np.ascontiguousarray(values[:, :200]), end_of_prefill=False)
        session.upload_prefill(0, np.ascontiguousarray(keys[:, 200:]),
                               np.ascontiguousarray(values[:, 200:]), token_begin=200)
        session.upload_prefill(1, keys, values)
        new_keys, new_values = random_kv("fp16", tokens=1, seed=7)
        session.append(0, TOKENS, new_keys[:, 0], new_values[:, 0])  # [kv_heads, head_dim]
        both_keys = np.stack([new_keys[:, 0], new_keys[:, 0]])       # [layers, kv_heads, dim]
        both_values = np.stack([new_values[:, 0], new_values[:, 0]])
        session.append(1, TOKENS, new_keys, new_values)
        session.append_token(TOKENS + 1, both_keys, both_values)
        info = session.info()
        assert [layer.num_tokens for layer in info.layers] == [TOKENS + 2, TOKENS + 2]
        got, _ = session.fetch(0, {0: [199, 200, TOKENS, TOKENS + 1]})
        assert same_bits(got, np.concatenate([keys[0, 199:201], new_keys[0], new_keys[0]]))


def test_bad_inputs_raise_value_error_saying_what_was_expected(client):
    with client.create_session(SHAPE) as session:
        keys, values = random_kv("fp16")
        with pytest.raises(ValueError, match="expected shape"):
            session.upload_prefill(0, keys[:1], values[:1])
        with pytest.raises(ValueError, match="fp16"):
            session.upload_prefill(0, keys.astype(np.float32), values.astype(np.float32))
        with pytest.raises(ValueError, match="contiguous"):
            session.upload_prefill(0, keys[:, ::2], values[:, ::2])
        with pytest.raises(ValueError, match="3 dimensions"):
            session.upload_prefill(0, keys[0], values[0])
        with pytest.raises(ValueError, match="numpy array or a torch tensor"):
            session.upload_prefill(0, keys.tolist(), values)
        assert [layer.num_tokens for layer in session.info().layers] == [0, 0]

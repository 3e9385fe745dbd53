"""Retrieval through the Python SDK: selections, rows by UCX and by gRPC, many sessions,
delta transfer."""

from __future__ import annotations

import numpy as np
import pytest

import pqkv
from conftest import SHAPE, TOKENS, random_kv, random_query, rows_at, same_bits

K = 32


def inside(array: np.ndarray, buffer: np.ndarray) -> bool:
    begin = buffer.ctypes.data
    return begin <= array.ctypes.data and array.ctypes.data + array.nbytes <= begin + buffer.nbytes


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("data_path", ["auto", "grpc"])
def test_rows_are_the_uploaded_bits(client, dtype, data_path):
    shape = pqkv.ModelShape(2, 2, 4, 64, dtype)
    with client.create_session(shape) as session:
        keys, values = random_kv(dtype, shape)
        session.upload_prefill(1, keys, values)
        with client.retrieval_stream(data_path=data_path) as stream:
            (result,) = stream.retrieve(1, [pqkv.Query(session, random_query(shape), K,
                                                       with_kv=True)])
            assert result.ok, result.error
            assert result.positions.dtype == np.int32
            assert result.positions.shape == (shape.num_kv_heads, K)
            assert result.scores.shape == (shape.num_kv_heads, K)
            assert result.num_tokens == TOKENS
            assert result.keys.shape == (shape.num_kv_heads, K, shape.head_dim)
            assert same_bits(result.keys, rows_at(keys, result.positions))
            assert same_bits(result.values, rows_at(values, result.positions))
            if data_path == "auto":
                # Written by the server itself into the registered buffer: no copy.
                assert result.data_path == "ucx-shm"
                assert result.rows_in_receive_buffer
                assert inside(result.keys, stream.receive_buffer)
                assert inside(result.values, stream.receive_buffer)
            else:
                assert result.data_path == "grpc"
                assert stream.receive_buffer is None and stream.receive_buffer_error
                assert not result.rows_in_receive_buffer
            kept_keys = result.keys
        # The memory under a view outlives the stream.
        assert same_bits(kept_keys, rows_at(keys, result.positions))


def test_positions_only_and_exclusions(client):
    index = pqkv.IndexOptions(sink_tokens=16, recent_window=32)
    with client.create_session(SHAPE, index=index) as session:
        keys, values = random_kv("fp16")
        for layer in range(SHAPE.num_layers):
            session.upload_prefill(layer, keys, values)
        with client.retrieval_stream() as stream:
            (result,) = stream.retrieve(0, [pqkv.Query(session.id, random_query(), K,
                                                       with_scores=False)])
        assert result.scores is None and result.keys is None and result.data_path == ""
        assert result.positions.min() >= 16 and result.positions.max() < TOKENS - 32
        for head in result.positions:
            assert len(set(head.tolist())) == K


def test_rerank_selects_the_exact_top_k(client):
    """With rerank covering every candidate, the selection is the exact GQA top-k."""
    index = pqkv.IndexOptions(sink_tokens=0, recent_window=0)
    shape = pqkv.ModelShape(1, 2, 4, 64, "fp32")
    with client.create_session(shape, index=index) as session:
        keys, values = random_kv("fp32", shape)
        session.upload_prefill(0, keys, values)
        query = random_query()
        with client.retrieval_stream() as stream:
            (result,) = stream.retrieve(0, [pqkv.Query(session, query, 8, rerank=64)])
        group = SHAPE.num_query_heads // SHAPE.num_kv_heads
        for h in range(SHAPE.num_kv_heads):
            logits = query[h * group:(h + 1) * group] @ keys[h].T / np.sqrt(SHAPE.head_dim)
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            weights = (weights / weights.sum(axis=1, keepdims=True)).sum(axis=0)
            assert set(result.positions[h].tolist()) == set(np.argsort(-weights)[:8].tolist())


def test_many_sessions_in_one_request(client):
    sessions, data = [], []
    for i, dtype in enumerate(["fp16", "fp32", "bf16"]):
        shape = pqkv.ModelShape(1, 2, 4, 64, dtype)
        session = client.create_session(shape)
        keys, values = random_kv(dtype, shape, seed=10 + i)
        session.upload_prefill(0, keys, values)
        sessions.append(session)
        data.append((keys, values))
    queries = [pqkv.Query(s, random_query(seed=20 + i), K + i, with_kv=True)
               for i, s in enumerate(sessions)]
    queries.append(pqkv.Query("no-such-session", random_query(), K))
    with client.retrieval_stream() as stream:
        results = stream.retrieve(0, queries)
    assert [r.session_id for r in results] == [s.id for s in sessions] + ["no-such-session"]
    for i, (result, (keys, values)) in enumerate(zip(results, data)):
        assert result.positions.shape == (2, K + i)
        assert same_bits(result.keys, rows_at(keys, result.positions))
        assert same_bits(result.values, rows_at(values, result.positions))
        assert result.rows_in_receive_buffer
    # One bad item fails alone.
    assert isinstance(results[-1].error, pqkv.NotFound)
    with pytest.raises(pqkv.NotFound):
        results[-1].positions
    for session in sessions:
        session.close()


def test_rows_that_do_not_fit_the_buffer_arrive_by_grpc(client):
    with client.create_session(SHAPE) as session:
        keys, values = random_kv("fp16")
        session.upload_prefill(0, keys, values)
        # 2 regions of 8 KiB; one query's K+V rows take 2 x 8 KiB.
        with client.retrieval_stream(receive_buffer_bytes=16 << 10) as stream:
            (result,) = stream.retrieve(0, [pqkv.Query(session, random_query(), K,
                                                       with_kv=True)])
        assert result.data_path == "grpc" and not result.rows_in_receive_buffer
        assert same_bits(result.keys, rows_at(keys, result.positions))


def test_regions_keep_earlier_views_valid(client):
    with client.create_session(SHAPE) as session:
        keys, values = random_kv("fp16")
        for layer in range(SHAPE.num_layers):
            session.upload_prefill(layer, keys[::-1].copy() if layer else keys,
                                   values[::-1].copy() if layer else values)
        with client.retrieval_stream(buffer_regions=2) as stream:
            (first,) = stream.retrieve(0, [pqkv.Query(session, random_query(), K, with_kv=True)])
            (second,) = stream.retrieve(1, [pqkv.Query(session, random_query(), K, with_kv=True)])
            assert same_bits(first.keys, rows_at(keys, first.positions))
            assert same_bits(second.keys, rows_at(keys[::-1], second.positions))
            assert first.keys.ctypes.data != second.keys.ctypes.data


def test_delta_transfer_sends_only_misses(client):
    with client.create_session(SHAPE) as session:
        keys, values = random_kv("fp16")
        session.upload_prefill(0, keys, values)
        query = pqkv.Query(session, random_query(), K, with_kv=True, cache_slots=64)
        with client.retrieval_stream() as stream:
            (cold,) = stream.retrieve(0, [query])
            assert [len(s) for s in cold.sent] == [K] * SHAPE.num_kv_heads
            cache = np.zeros((SHAPE.num_kv_heads, 64, SHAPE.head_dim), np.float16)
            row = 0
            for h, sent in enumerate(cold.sent):
                for j in sent:
                    cache[h, cold.slots[h, j]] = cold.keys[row]
                    row += 1
            (warm,) = stream.retrieve(0, [query])
        assert [len(s) for s in warm.sent] == [0] * SHAPE.num_kv_heads
        assert warm.cache_saved_bytes == 2 * SHAPE.num_kv_heads * K * SHAPE.row_bytes
        np.testing.assert_array_equal(warm.positions, cold.positions)
        for h in range(SHAPE.num_kv_heads):
            assert same_bits(cache[h, warm.slots[h]], keys[h, warm.positions[h]])

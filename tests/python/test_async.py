"""retrieve_async and retrieve_aio: a retrieval in flight while Python computes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import faulthandler
import threading

import numpy as np
import pytest

import pqkv
from conftest import SHAPE, frozen, random_kv, random_query, rows_at, same_bits
from pqkv.local_server import LocalServer

K = 16


class _Recorder:
    """Wraps the native stream to signal when a blocking retrieve call has entered it."""

    def __init__(self, native):
        self._native = native
        self.entered = threading.Event()

    def retrieve(self, layer, items):
        self.entered.set()
        return self._native.retrieve(layer, items)

    def __getattr__(self, name):
        return getattr(self._native, name)


def test_python_runs_while_a_retrieval_waits_on_the_server():
    """The server is stopped (SIGSTOP) while retrievals are in flight, so they cannot
    finish until this thread resumes it: that this thread runs Python meanwhile proves
    that a retrieve waiting on the server (on another thread) does not hold the GIL.
    A submitted call queues behind it. The computation and both retrievals are checked."""
    faulthandler.dump_traceback_later(120, exit=True)  # a held GIL would hang here
    try:
        with LocalServer() as server, pqkv.Client(server.address) as client:
            with client.create_session(SHAPE) as session:
                keys, values = random_kv("fp16")
                session.upload_prefill(0, keys, values)
                query = pqkv.Query(session, random_query(), K, with_kv=True)
                with client.retrieval_stream(buffer_regions=3) as stream:
                    recorder = _Recorder(stream._native)
                    stream._native = recorder
                    blocking = []
                    with frozen(server):
                        thread = threading.Thread(
                            target=lambda: blocking.extend(stream.retrieve(0, [query])))
                        thread.start()
                        assert recorder.entered.wait(30)
                        future = stream.retrieve_async(0, [query])
                        total = sum(i * i for i in range(200_000))  # pure Python, holds the GIL
                        assert not future.done() and not blocking
                    thread.join(60)
                    (result,) = future.result(timeout=60)
        assert total == sum(i * i for i in range(200_000))
        assert same_bits(result.keys, rows_at(keys, result.positions))
        assert same_bits(blocking[0].keys, rows_at(keys, blocking[0].positions))
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_pipelined_layers_match_serial(client):
    """Layer L+1's retrieval in flight while layer L's rows are used, over every layer,
    gives the serial loop's answers."""
    shape = pqkv.ModelShape(4, 2, 4, 64, "fp32")
    with client.create_session(shape) as session:
        data = [random_kv("fp32", shape, seed=layer) for layer in range(shape.num_layers)]
        for layer, (keys, values) in enumerate(data):
            session.upload_prefill(layer, keys, values)
        queries = [pqkv.Query(session, random_query(shape, seed=50 + layer), K, with_kv=True)
                   for layer in range(shape.num_layers)]

        def attend(layer, result):  # a stand-in for the worker's attention over the rows
            q = queries[layer].query.reshape(shape.num_kv_heads, -1, shape.head_dim)
            logits = np.einsum("hgd,hkd->hgk", q, result.keys)
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            return np.einsum("hgk,hkd->hgd", weights, result.values)

        with client.retrieval_stream() as stream:
            serial = [attend(layer, stream.retrieve(layer, [queries[layer]])[0])
                      for layer in range(shape.num_layers)]
            pipelined = []
            future = stream.retrieve_async(0, [queries[0]])
            for layer in range(shape.num_layers):
                (result,) = future.result()
                if layer + 1 < shape.num_layers:
                    future = stream.retrieve_async(layer + 1, [queries[layer + 1]])
                assert same_bits(result.keys, rows_at(data[layer][0], result.positions))
                pipelined.append(attend(layer, result))
        for a, b in zip(serial, pipelined):
            np.testing.assert_array_equal(a, b)


def test_retrieve_aio(client):
    with client.create_session(SHAPE) as session:
        keys, values = random_kv("fp16")
        session.upload_prefill(0, keys, values)
        with client.retrieval_stream() as stream:
            async def both_layers():
                return await asyncio.gather(
                    stream.retrieve_aio(0, [pqkv.Query(session, random_query(), K, with_kv=True)]),
                    stream.retrieve_aio(0, [pqkv.Query(session, random_query(seed=9), K)]))

            (first,), (second,) = asyncio.run(both_layers())
        assert same_bits(first.values, rows_at(values, first.positions))
        assert second.positions.shape == (SHAPE.num_kv_heads, K)


def test_futures_complete_for_waiters_callbacks_and_timeouts(client, server):
    with client.create_session(SHAPE) as session:
        keys, values = random_kv("fp16")
        session.upload_prefill(0, keys, values)
        query = pqkv.Query(session, random_query(), K, with_kv=True)
        with client.retrieval_stream(buffer_regions=4) as stream:
            called = threading.Event()
            futures = [stream.retrieve_async(0, [query]) for _ in range(3)]
            futures[0].add_done_callback(lambda f: called.set())
            done, not_done = concurrent.futures.wait(futures, timeout=60)  # nobody asks for results
            assert len(done) == 3 and not not_done
            assert called.wait(60)
            for future in futures:
                (result,) = future.result()
                assert same_bits(result.values, rows_at(values, result.positions))
            with frozen(server):
                late = stream.retrieve_async(0, [query])
                with pytest.raises(concurrent.futures.TimeoutError):
                    late.result(timeout=0.2)
            assert late.result(timeout=60)[0].ok

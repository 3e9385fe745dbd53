"""retrieve_async and retrieve_aio: a retrieval in flight while Python computes."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import threading

import numpy as np

import pqkv
from conftest import SHAPE, random_kv, random_query, rows_at, same_bits
from pqkv.local_server import LocalServer

K = 16


class _Recorder:
    """Wraps the native stream to signal when a retrieve call has entered it."""

    def __init__(self, native):
        self._native = native
        self.entered = threading.Event()

    def retrieve(self, layer, items):
        self.entered.set()
        return self._native.retrieve(layer, items)

    def __getattr__(self, name):
        return getattr(self._native, name)


def test_python_runs_while_a_retrieval_waits_on_the_server():
    """The server is stopped (SIGSTOP) while the retrieval is in flight, so it cannot
    finish until this thread resumes the server: that this thread runs at all proves the
    native call released the GIL. Both the computation and the retrieval are checked."""
    faulthandler.dump_traceback_later(120, exit=True)  # a held GIL would hang here
    try:
        with LocalServer() as server, pqkv.Client(server.address) as client:
            with client.create_session(SHAPE) as session:
                keys, values = random_kv("fp16")
                session.upload_prefill(0, keys, values)
                with client.retrieval_stream() as stream:
                    recorder = _Recorder(stream._native)
                    stream._native = recorder
                    os.kill(server._process.pid, signal.SIGSTOP)
                    try:
                        future = stream.retrieve_async(
                            0, [pqkv.Query(session, random_query(), K, with_kv=True)])
                        assert recorder.entered.wait(30)
                        total = sum(i * i for i in range(200_000))  # pure Python, holds the GIL
                        assert not future.done()
                    finally:
                        os.kill(server._process.pid, signal.SIGCONT)
                    (result,) = future.result(timeout=60)
        assert total == sum(i * i for i in range(200_000))
        assert same_bits(result.keys, rows_at(keys, result.positions))
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
            return np.einsum("hgk,hkd->hgd", weights / weights.sum(-1, keepdims=True), result.values)

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

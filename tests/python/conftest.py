"""Fixtures: the real pqkv-server on a free loopback port (PQKV_SERVER_BINARY, set by
the Bazel test; else bazel-bin/server/pqkv-server), and K/V data of every dtype."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import numpy as np
import pytest

import pqkv
from pqkv.local_server import LocalServer


@pytest.fixture(scope="session")
def server():
    with LocalServer() as running:
        yield running


@pytest.fixture
def client(server):
    with pqkv.Client(server.address) as connected:
        yield connected


SHAPE = pqkv.ModelShape(num_layers=2, num_kv_heads=2, num_query_heads=4, head_dim=64)
TOKENS = 512


def random_kv(dtype: str, shape: pqkv.ModelShape = SHAPE, tokens: int = TOKENS, seed: int = 0):
    """Random finite keys and values [kv_heads, tokens, head_dim] in `dtype` (bf16 as
    uint16 bit patterns, numpy having no bfloat16)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        x = rng.standard_normal((shape.num_kv_heads, tokens, shape.head_dim), dtype=np.float32)
        if dtype == "fp16":
            out.append(x.astype(np.float16))
        elif dtype == "bf16":
            out.append((x.view(np.uint32) >> 16).astype(np.uint16))
        else:
            out.append(x)
    return out[0], out[1]


def random_query(shape: pqkv.ModelShape = SHAPE, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((shape.num_query_heads, shape.head_dim), dtype=np.float32)


def rows_at(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """x[h, positions[h]] for every kv head: [kv_heads, k, head_dim]."""
    return np.stack([x[h, positions[h]] for h in range(x.shape[0])])


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.shape == b.shape and
            np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


@contextlib.contextmanager
def frozen(server: LocalServer):
    """The server process stopped (SIGSTOP: alive, but answering nothing) until the block
    ends. Waits until every one of its threads has stopped: the signal is asynchronous."""
    pid = server._process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 30
        while not all(_thread_state(pid, tid) in ("T", "t", "")
                      for tid in os.listdir(f"/proc/{pid}/task")):
            assert time.monotonic() < deadline, "the server did not stop"
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _thread_state(pid: int, tid: str) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""  # the thread has exited

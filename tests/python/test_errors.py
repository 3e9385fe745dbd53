"""Each pqkv.Error class from a real bad request, with the server's message."""

from __future__ import annotations


import pytest

import pqkv
from conftest import SHAPE, frozen, random_kv, random_query
from pqkv.local_server import LocalServer


def test_not_found_for_unknown_and_closed_sessions(client):
    with pytest.raises(pqkv.NotFound) as raised:
        client.get_session("never-made")
    assert raised.value.code is pqkv.StatusCode.NOT_FOUND
    assert "never-made" in raised.value.message
    session = client.create_session(SHAPE, session_id="closed-then-used")
    session.close()
    with pytest.raises(pqkv.NotFound):
        client.get_session("closed-then-used")
    with pytest.raises(pqkv.NotFound):
        session.close()
    keys, values = random_kv("fp16")
    with pytest.raises(pqkv.NotFound):
        session.upload_prefill(0, keys, values)
    with client.retrieval_stream() as stream:
        (result,) = stream.retrieve(0, [pqkv.Query("closed-then-used", random_query(), 4)])
    assert isinstance(result.error, pqkv.NotFound)


def test_invalid_argument(client):
    with pytest.raises(pqkv.InvalidArgument) as raised:
        client.create_session(pqkv.ModelShape(1, 3, 4, 64))  # 4 query heads over 3 kv heads
    assert isinstance(raised.value, ValueError)
    with client.create_session(SHAPE) as session:
        keys, values = random_kv("fp16")
        session.upload_prefill(0, keys, values)
        with client.retrieval_stream() as stream:
            (too_many,) = stream.retrieve(0, [pqkv.Query(session, random_query(), 10_000)])
        assert isinstance(too_many.error, pqkv.InvalidArgument)
        assert "k" in too_many.error.message
        with pytest.raises(pqkv.InvalidArgument):
            session.upload_prefill(0, keys, values, token_begin=5000)  # a gap


def test_already_exists(client):
    with client.create_session(SHAPE, session_id="twice"):
        with pytest.raises(pqkv.AlreadyExists):
            client.create_session(SHAPE, session_id="twice")


def test_resource_exhausted_by_the_memory_budget():
    with LocalServer(args=["--memory_budget=1MiB"]) as server, \
            pqkv.Client(server.address) as client:
        shape = pqkv.ModelShape(1, 8, 8, 128, "fp32")
        with client.create_session(shape) as session:
            keys, values = random_kv("fp32", shape, tokens=1024)
            with pytest.raises(pqkv.ResourceExhausted) as raised:
                session.upload_prefill(0, keys, values)
            assert "budget" in raised.value.message


def test_unauthenticated_and_tokens(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:secret-a\nbob:secret-b\n")
    with LocalServer(args=[f"--auth_tokens_file={tokens}"]) as server:
        with pqkv.Client(server.address) as anonymous:
            with pytest.raises(pqkv.Unauthenticated):
                anonymous.create_session(SHAPE)
        with pqkv.Client(server.address, token="wrong") as wrong:
            with pytest.raises(pqkv.Unauthenticated):
                wrong.list_sessions()
        with pqkv.Client(server.address, token="secret-a") as alice, \
                pqkv.Client(server.address, token="secret-b") as bob:
            with alice.create_session(SHAPE, session_id="mine"):
                with pytest.raises(pqkv.NotFound):  # sessions belong to their token
                    bob.get_session("mine")


def test_unavailable_when_nothing_listens():
    with LocalServer() as server:
        address = server.address
    with pytest.raises(pqkv.Unavailable) as raised:
        pqkv.Client(address, connect_timeout=0.5)
    assert address in raised.value.message


def test_deadline_exceeded_when_the_server_hangs():
    with LocalServer() as server, pqkv.Client(server.address, timeout=0.5) as client:
        with frozen(server), pytest.raises(pqkv.DeadlineExceeded) as raised:
            client.create_session(SHAPE)
        assert isinstance(raised.value, TimeoutError)


def test_failed_precondition_for_ucx_the_server_refuses():
    with LocalServer(args=["--ucx=false"]) as server, pqkv.Client(server.address) as client:
        with client.create_session(SHAPE) as session:
            keys, values = random_kv("fp16")
            session.upload_prefill(0, keys, values)
            with client.retrieval_stream(data_path="ucx") as stream:
                (result,) = stream.retrieve(0, [pqkv.Query(session, random_query(), 4,
                                                           with_kv=True)])
            assert isinstance(result.error, pqkv.FailedPrecondition)
            assert "UCX" in result.error.message
            # Positions only still work on that server.
            with client.retrieval_stream(data_path="auto") as stream:
                (result,) = stream.retrieve(0, [pqkv.Query(session, random_query(), 4,
                                                           with_kv=True)])
            assert result.ok and result.data_path == "grpc"


def test_bad_stream_options(client):
    with pytest.raises(pqkv.InvalidArgument):
        client.retrieval_stream(data_path="carrier-pigeon")
    with pytest.raises(ValueError):
        client.retrieval_stream(buffer_regions=0)
    with pytest.raises(ValueError, match="tls"):
        pqkv.Client("127.0.0.1:1", tls={"root_cert": "x"})

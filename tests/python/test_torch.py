"""torch tensors in and out (skipped where torch is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

import pqkv
from conftest import SHAPE, random_query

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_torch_tensors_upload_without_conversion(client, dtype):
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    shape = pqkv.ModelShape(1, 2, 4, 64, dtype)
    keys = torch.randn(2, 512, 64).to(torch_dtype)
    values = torch.randn(2, 512, 64).to(torch_dtype)
    with client.create_session(shape) as session:
        session.upload_prefill(0, keys, values)
        with client.retrieval_stream() as stream:
            (result,) = stream.retrieve(0, [pqkv.Query(session, torch.from_numpy(random_query()),
                                                       16, with_kv=True)])
        got = torch.from_numpy(np.ascontiguousarray(result.keys).view(
            np.uint16 if dtype == "bf16" else result.keys.dtype))
        if dtype == "bf16":
            got = got.view(torch.bfloat16)
        expected = torch.stack([keys[h, torch.from_numpy(result.positions[h]).long()]
                                for h in range(2)])
        assert torch.equal(got, expected)


def test_torch_errors(client):
    with client.create_session(SHAPE) as session:
        keys = torch.randn(2, 512, 64).half()
        with pytest.raises(ValueError, match="torch.float16"):
            session.upload_prefill(0, keys.float(), keys.float())
        with pytest.raises(ValueError, match="contiguous"):
            session.upload_prefill(0, keys.transpose(0, 1).contiguous().transpose(0, 1), keys)

"""Arrays in and out of the native extension: K/V inputs become (address, bytes) without a
copy, after their shape, dtype, device and layout are checked; rows come back as numpy
arrays of the session's dtype.

numpy has no bfloat16 of its own: bf16 K/V may be given as `ml_dtypes.bfloat16` arrays,
as uint16 arrays of raw bf16 bits, or as torch.bfloat16 tensors, and bf16 rows come back
as `ml_dtypes.bfloat16` where that package is installed, else as uint16 bit patterns
(`torch.from_numpy(rows).view(torch.bfloat16)` reads them without a copy).
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np

from .types import DType

try:  # optional: numpy's bfloat16 as jax and others spell it
    import ml_dtypes as _ml_dtypes

    _NUMPY_BF16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    _NUMPY_BF16 = None

# numpy dtype names accepted for each session dtype.
_ACCEPTED_NUMPY = {
    DType.FP16: ("float16",),
    DType.BF16: ("bfloat16", "uint16"),
    DType.FP32: ("float32",),
}
_TORCH_NAMES = {
    DType.FP16: "torch.float16",
    DType.BF16: "torch.bfloat16",
    DType.FP32: "torch.float32",
}


def numpy_dtype(dtype: DType) -> np.dtype:
    """The numpy dtype rows of `dtype` are returned in."""
    if dtype is DType.FP16:
        return np.dtype(np.float16)
    if dtype is DType.FP32:
        return np.dtype(np.float32)
    return _NUMPY_BF16 if _NUMPY_BF16 is not None else np.dtype(np.uint16)


def is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "data_ptr")


def kv_buffer(name: str, x: Any, dtype: DType, shape: Sequence[int]) -> Tuple[int, int]:
    """(address, bytes) of a K or V input, which must be C-contiguous, of `dtype`, and
    shaped `shape`; raises ValueError saying what was expected otherwise. The caller keeps
    `x` alive while the address is used."""
    expected = tuple(int(n) for n in shape)
    if is_torch_tensor(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name}: a CPU tensor is needed, got one on {x.device} "
                             f"(move it with .cpu(); pqkv reads host memory)")
        if str(x.dtype) != _TORCH_NAMES[dtype]:
            raise ValueError(f"{name}: the session's dtype is {dtype.value}, expected "
                             f"{_TORCH_NAMES[dtype]}, got {x.dtype}")
        if tuple(x.shape) != expected:
            raise ValueError(f"{name}: expected shape {expected} [kv_heads, tokens, head_dim], "
                             f"got {tuple(x.shape)}")
        if not x.is_contiguous():
            raise ValueError(f"{name}: the tensor must be contiguous (call .contiguous())")
        return int(x.data_ptr()), int(x.numel()) * int(x.element_size())
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array or a torch tensor, "
                         f"got {type(x).__name__}")
    if x.dtype.name not in _ACCEPTED_NUMPY[dtype]:
        wanted = " or ".join(_ACCEPTED_NUMPY[dtype])
        raise ValueError(f"{name}: the session's dtype is {dtype.value}, expected a {wanted} "
                         f"array, got {x.dtype}")
    if x.shape != expected:
        raise ValueError(f"{name}: expected shape {expected} [kv_heads, tokens, head_dim], "
                         f"got {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: the array must be C-contiguous (np.ascontiguousarray)")
    return int(x.ctypes.data), int(x.nbytes)


def tokens_of(name: str, x: Any) -> int:
    """The token count of a [kv_heads, tokens, head_dim] input."""
    if not (isinstance(x, np.ndarray) or is_torch_tensor(x)):
        raise ValueError(f"{name}: expected a numpy array or a torch tensor, "
                         f"got {type(x).__name__}")
    shape = tuple(x.shape)
    if len(shape) != 3:
        raise ValueError(f"{name}: expected 3 dimensions [kv_heads, tokens, head_dim], "
                         f"got shape {shape}")
    return int(shape[1])


def query_array(x: Any, num_query_heads: int, head_dim: int) -> np.ndarray:
    """A query as a contiguous float32 [query_heads * head_dim] array. Queries are small
    and copied into the request anyway, so any real dtype and layout is converted."""
    if is_torch_tensor(x):
        x = x.detach().to("cpu").float().numpy()
    array = np.asarray(x)
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise ValueError(f"query: expected floating-point values, got {array.dtype}")
    if array.size != num_query_heads * head_dim:
        raise ValueError(f"query: expected {num_query_heads} x {head_dim} values "
                         f"[query_heads, head_dim], got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32).reshape(-1)

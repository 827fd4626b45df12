"""Tensors on the wire: raw bytes, dtype and shape; exact, so a remote stage sees what a local one would."""

from __future__ import annotations

from typing import Any

from phage.errors import InvalidInput
from phage.protocol.v1 import dataplane_pb2 as dp

DTYPES = ("float32", "float16", "bfloat16", "int64")
MAX_ELEMENTS = 64 * 1024 * 1024


def tensor_to_pb(tensor: Any, name: str = "") -> dp.Tensor:
    """A torch tensor as a wire message (bfloat16 travels as its raw 16 bits)."""
    import torch

    t = tensor.detach().contiguous().cpu()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise InvalidInput(
            f"tensor dtype {dtype} cannot travel; use one of {', '.join(DTYPES)}", field="dtype"
        )
    raw = t.view(torch.int16) if dtype == "bfloat16" else t
    return dp.Tensor(name=name, dtype=dtype, shape=list(t.shape), data=raw.numpy().tobytes())


def tensor_from_pb(msg: dp.Tensor) -> Any:
    """The torch tensor a wire message carries; refuses a size that does not add up."""
    import torch

    if msg.dtype not in DTYPES:
        raise InvalidInput(f"unknown tensor dtype {msg.dtype!r}", field="dtype")
    count = 1
    for d in msg.shape:
        if d < 0:
            raise InvalidInput("tensor shape has a negative dimension", field="shape")
        count *= d
    if count > MAX_ELEMENTS:
        raise InvalidInput(f"tensor of {count} elements is over the limit of {MAX_ELEMENTS}", field="shape")
    width = 8 if msg.dtype == "int64" else 4 if msg.dtype == "float32" else 2
    if len(msg.data) != count * width:
        raise InvalidInput(
            f"tensor data is {len(msg.data)} bytes; "
            f"shape {list(msg.shape)} of {msg.dtype} needs {count * width}",
            field="data",
        )
    wire = torch.int16 if msg.dtype == "bfloat16" else getattr(torch, msg.dtype)
    flat = torch.frombuffer(bytearray(msg.data), dtype=wire) if count else torch.empty(0, dtype=wire)
    if msg.dtype == "bfloat16":
        flat = flat.view(torch.bfloat16)
    return flat.reshape(tuple(msg.shape))

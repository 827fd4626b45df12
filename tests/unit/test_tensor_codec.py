"""Tensors on the wire are exact, and a frame whose bytes do not add up is refused."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from phage.dataplane import tensor_from_pb, tensor_to_pb  # noqa: E402
from phage.errors import InvalidInput  # noqa: E402
from phage.protocol.v1 import dataplane_pb2 as dp  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_round_trip_is_bit_exact(dtype: object) -> None:
    t = (torch.randn(1, 3, 5) * 100).to(dtype)  # type: ignore[arg-type]
    back = tensor_from_pb(tensor_to_pb(t, "x"))
    assert back.dtype == t.dtype and back.shape == t.shape
    assert torch.equal(
        back.view(torch.int16) if dtype == torch.bfloat16 else back,
        t.view(torch.int16) if dtype == torch.bfloat16 else t,
    )


def test_bad_frames_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidInput) as e:
        tensor_from_pb(dp.Tensor(dtype="float32", shape=[2, 2], data=b"\0" * 15))
    assert e.value.field == "data" and "needs 16" in e.value.message
    with pytest.raises(InvalidInput) as e:
        tensor_from_pb(dp.Tensor(dtype="complex64", shape=[1], data=b"\0" * 8))
    assert e.value.field == "dtype"
    with pytest.raises(InvalidInput) as e:
        tensor_from_pb(dp.Tensor(dtype="float32", shape=[1 << 20, 1 << 20], data=b""))
    assert e.value.field == "shape"
    with pytest.raises(InvalidInput):
        tensor_to_pb(torch.zeros(2, dtype=torch.complex64))

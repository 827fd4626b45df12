"""A node's VNode workers: frames to a local consumer pass in memory, and a broken stream loses no frame."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch

from phage.node.training import _CLOSE, LocalFrame, VNodeHost, _Worker, unpack
from phage.protocol.v1 import training_pb2 as tpb

SPEC = (Path(__file__).parents[2] / "examples" / "digits.yaml").read_text()


def worker(host: VNodeHost, vnode_id: str) -> _Worker:
    import yaml

    spec = json.dumps(yaml.safe_load(SPEC))
    return _Worker(host, tpb.HostVNode(network_id="n", vnode_id=vnode_id, spec_json=spec, generation=1))


class Call:
    """A stand-in for one Activations call: records writes, or breaks at the n-th."""

    def __init__(self, break_at: int = -1) -> None:
        self.sent: list[Any] = []
        self.break_at = break_at
        self.closed = False

    async def write(self, frame: Any) -> None:
        if len(self.sent) == self.break_at:
            raise ConnectionError("stream broke")
        self.sent.append(frame)

    async def done_writing(self) -> None:
        self.closed = True


async def test_a_frame_whose_write_broke_goes_first_on_the_next_call(tmp_path: Path) -> None:
    w = worker(VNodeHost("node", lambda: None, tmp_path), "mid")  # type: ignore[arg-type,return-value]
    for f in (tpb.ActivationFrame(seq=7), tpb.ActivationFrame(seq=-1, end=True), _CLOSE):
        w.out.put_nowait(f)
    broken = Call(break_at=1)  # the header goes, frame 7 does not
    with pytest.raises(ConnectionError):
        await w._frames_up(broken)
    again = Call()
    await w._frames_up(again)
    assert [f.seq for f in again.sent] == [0, 7, -1] and again.sent[2].end and again.closed


async def test_a_call_cancelled_while_waiting_leaves_the_next_frame_to_the_next_call(tmp_path: Path) -> None:
    """The end marker, put after a stream broke, must not vanish into the dead call's writer."""
    w = worker(VNodeHost("node", lambda: None, tmp_path), "mid")  # type: ignore[arg-type,return-value]
    dead = Call()
    pump = asyncio.create_task(w._frames_up(dead))
    await asyncio.sleep(0.01)  # parked on the empty queue
    pump.cancel()
    await asyncio.gather(pump, return_exceptions=True)
    w.out.put_nowait(tpb.ActivationFrame(seq=-1, end=True))
    w.out.put_nowait(_CLOSE)
    live = Call()
    await w._frames_up(live)
    assert [f.end for f in live.sent] == [False, True] and len(dead.sent) == 1


async def test_a_frame_for_a_consumer_on_this_node_skips_the_relay(tmp_path: Path) -> None:
    host = VNodeHost("node", lambda: None, tmp_path)  # type: ignore[arg-type,return-value]
    mid, neck = worker(host, "mid"), worker(host, "neck")
    host.hosted[("n", "neck")] = neck
    out, y = torch.ones(2, 3), torch.tensor([1, 2])
    await mid._pass_on(3, out, y)
    got = neck.inbox.get_nowait()
    assert got.vnode_id == "mid" and got.seq == 3 and mid.out.empty()
    assert isinstance(got, LocalFrame) and got.x is out  # in memory: the tensor itself, not a copy
    neck.finished.set()  # that hosting ended: the relay takes the frame instead
    await mid._pass_on(4, out, y)
    relayed = mid.out.get_nowait()
    assert relayed.seq == 4 and neck.inbox.empty()
    xs, labels = unpack(relayed.tensor)
    assert torch.equal(xs[0], out) and torch.equal(labels, y)

"""The two requests of the ``stage`` service, built in one place for every caller.

``forward`` runs input chunks through a node's blocks (a chain's hop, a verifier's
recomputation); ``push`` hands a chain node the input of one step (from the node before
it, or from the chain's driver when that node could not). The receiving side is
:mod:`phage.node.stage_service`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from phage.dataplane.tensors import tensor_to_pb
from phage.protocol.v1 import dataplane_pb2 as dp


def forward_frame(model: str, chunks: Sequence[Any], start: int, end: int) -> dp.Frame:
    """Run ``chunks`` (tensors, in order) through blocks ``start``..``end`` of ``model``."""
    return dp.Frame(
        service="stage",
        op="forward",
        tensors=[tensor_to_pb(c) for c in chunks],
        ints={"start": start, "end": end},
        strings={"model": model},
    )


def push_frame(output: dp.Tensor, step: int, session: str, client: str) -> dp.Frame:
    """The input of ``step`` of ``client``'s chain session ``session``, already on the wire."""
    return dp.Frame(
        service="stage",
        op="push",
        tensors=[output],
        ints={"step": step},
        strings={"session": session, "client": client},
    )

"""Training jobs of composable networks, and the state of each VNode, as the coordinator records them."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from phage.errors import InvalidInput

MAX_EPOCHS = 1000
MAX_BATCH = 65536
MAX_HOLDOUT_BOUND = 1000.0
HISTORY_POINTS = 400
"""Loss-curve points kept per VNode (older ones are thinned out, never the ends)."""


class NetworkState(enum.StrEnum):
    """Where a training job is."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """How a network is trained: passes, batches, seed, checkpoints and checking."""

    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    checkpoint_every: int = 20
    """Optimizer steps between a VNode's checkpoints."""
    check_rate: float = 0.05
    """Share of an untrusted node's steps recomputed on another node."""
    holdout_bound: float = 0.5
    """How far (in units of the VNode's loss) an untrusted node's checkpoint may raise its
    VNode's local loss on held-out rows above the last validated checkpoint's."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> TrainingConfig:
        """Validate a request's training settings; every error names its field."""
        known = {"epochs", "batch_size", "seed", "checkpoint_every", "check_rate", "holdout_bound"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidInput(f"unknown training setting {unknown[0]!r}", field=unknown[0])
        out = cls()
        values: dict[str, Any] = {}
        for name, lo, hi in (
            ("epochs", 1, MAX_EPOCHS),
            ("batch_size", 1, MAX_BATCH),
            ("seed", 0, 2**31 - 1),
            ("checkpoint_every", 1, 1_000_000),
        ):
            v = raw.get(name, getattr(out, name))
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise InvalidInput(f"{name} must be an integer from {lo} to {hi}", field=name)
            values[name] = v
        rate = raw.get("check_rate", out.check_rate)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise InvalidInput("check_rate must be a number from 0 to 1", field="check_rate")
        bound = raw.get("holdout_bound", out.holdout_bound)
        if (
            not isinstance(bound, int | float)
            or isinstance(bound, bool)
            or not 0 <= bound <= MAX_HOLDOUT_BOUND
        ):
            raise InvalidInput(
                f"holdout_bound must be a number from 0 to {MAX_HOLDOUT_BOUND}", field="holdout_bound"
            )
        return cls(check_rate=float(rate), holdout_bound=float(bound), **values)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (store and API)."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "checkpoint_every": self.checkpoint_every,
            "check_rate": self.check_rate,
            "holdout_bound": self.holdout_bound,
        }


@dataclass(frozen=True, slots=True)
class NetworkRecord:
    """One training job."""

    id: str
    name: str
    owner: str
    state: NetworkState
    spec: Mapping[str, Any]
    config: TrainingConfig
    dataset: str
    created_at: float
    updated_at: float
    result: Mapping[str, Any] | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class VNodeState:
    """Where one VNode lives and how far it got."""

    network_id: str
    vnode_id: str
    node_id: str = ""
    generation: int = 0
    step: int = 0
    last_batch: int = -1
    checkpoint: str = ""
    checkpoint_step: int = 0
    validated_checkpoint: str = ""
    """The newest checkpoint known good: rolled back to when its host is caught."""
    done: bool = False
    history: tuple[tuple[int, float], ...] = field(default=())
    """(step, local loss) points for the loss curve."""
    updated_at: float = 0.0


def thin_history(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Keep a loss curve under :data:`HISTORY_POINTS` by dropping every other old point."""
    if len(points) <= HISTORY_POINTS:
        return points
    head, tail = points[: -HISTORY_POINTS // 2], points[-HISTORY_POINTS // 2 :]
    return head[::2] + tail

"""The registry of building blocks a VNode is made of, with their shape rules.

Shape rules are plain Python, so a coordinator can validate a network spec
without torch; only :meth:`BlockType.make` (called on the node that hosts the
VNode) imports torch. Shapes never include the batch dimension.

Register a new kind of block with :func:`register_block`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from phage.errors import InvalidInput

if TYPE_CHECKING:
    from torch import nn

Shape = tuple[int, ...]
Params = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter a block accepts."""

    kind: type
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: int | float | None = None


@dataclass(frozen=True, slots=True)
class BlockType:
    """A kind of block: its parameters, its shape rule and how to build it."""

    name: str
    params: Mapping[str, Param]
    out_shape: Callable[[Shape, Params, str], Shape]
    """Output shape for an input shape; raises :class:`InvalidInput` naming the field."""
    build: Callable[[Shape, Params], nn.Module]
    cost: Callable[[Shape, Shape, Params], int] | None = None
    """Multiply-adds per input row, from the input and output shapes (None: one per output
    element): what placement balances nodes by, so that it needs no torch."""

    def row_cost(self, in_shape: Shape, out_shape: Shape, params: Params) -> int:
        """Multiply-adds one row costs through this block (an estimate, for placement)."""
        if self.cost is not None:
            return self.cost(in_shape, out_shape, params)
        return math.prod(out_shape)

    def resolve(self, raw: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Check ``raw`` against the declared parameters and fill in defaults."""
        unknown = sorted(set(raw) - set(self.params))
        if unknown:
            raise InvalidInput(
                f"block {self.name!r} has no parameter {unknown[0]!r} (it takes {sorted(self.params)})",
                field=f"{where}.{unknown[0]}",
            )
        out: dict[str, Any] = {}
        for key, spec in self.params.items():
            if key not in raw:
                if spec.required:
                    raise InvalidInput(f"block {self.name!r} needs {key!r}", field=f"{where}.{key}")
                out[key] = spec.default
                continue
            value = raw[key]
            ok = isinstance(value, spec.kind) and not (spec.kind is int and isinstance(value, bool))
            if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise InvalidInput(
                    f"{key!r} must be {spec.kind.__name__}, got {type(value).__name__}",
                    field=f"{where}.{key}",
                )
            if spec.choices and value not in spec.choices:
                raise InvalidInput(f"{key!r} must be one of {list(spec.choices)}", field=f"{where}.{key}")
            if spec.minimum is not None and value < spec.minimum:
                raise InvalidInput(f"{key!r} must be at least {spec.minimum}", field=f"{where}.{key}")
            out[key] = value
        return out

    def make(self, in_shape: Shape, params: Params) -> nn.Module:
        """Build the torch module (on the node that hosts the VNode)."""
        return self.build(in_shape, params)


_REGISTRY: dict[str, BlockType] = {}
MAX_WIDTH = 1 << 16
"""The largest single dimension a block may produce: a guard against specs that would exhaust memory."""


def register_block(block: BlockType) -> BlockType:
    """Add a kind of block to the registry (a later one with the same name replaces it)."""
    _REGISTRY[block.name] = block
    return block


def block_type(name: str, where: str) -> BlockType:
    """The registered block called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidInput(
            f"unknown block type {name!r} (known: {', '.join(sorted(_REGISTRY))})", field=where
        ) from None


def known_blocks() -> list[str]:
    """Names of every registered block."""
    return sorted(_REGISTRY)


def _rank(in_shape: Shape, rank: int, name: str, where: str) -> None:
    if len(in_shape) != rank:
        raise InvalidInput(
            f"{name} takes inputs of rank {rank}, got shape {list(in_shape)}", field=f"{where}.type"
        )


def _width(value: int, where: str) -> int:
    if value > MAX_WIDTH:
        raise InvalidInput(f"dimension {value} is over the limit of {MAX_WIDTH}", field=where)
    return value


# ---- shape rules and builders ------------------------------------------------------


def _linear_shape(s: Shape, p: Params, where: str) -> Shape:
    _rank(s, 1, "linear", where)
    if p["in_features"] is not None and p["in_features"] != s[0]:
        raise InvalidInput(
            f"linear declares in_features={p['in_features']} but its input has {s[0]} features",
            field=f"{where}.in_features",
        )
    return (_width(p["out_features"], f"{where}.out_features"),)


def _linear(s: Shape, p: Params) -> nn.Module:
    from torch import nn

    return nn.Linear(s[0], p["out_features"], bias=p["bias"])


def _matmul_cost(s: Shape, out: Shape, p: Params) -> int:
    return math.prod(s[:-1]) * s[-1] * out[-1]


def _conv_cost(s: Shape, out: Shape, p: Params) -> int:
    return math.prod(out) * s[0] * int(p["kernel"]) ** 2


def _residual_cost(s: Shape, out: Shape, p: Params) -> int:
    return 2 * s[0] * int(p["hidden"])


def _transformer_cost(s: Shape, out: Shape, p: Params) -> int:
    seq, d = s
    return seq * (4 * d * d + 2 * d * (p["ff"] or 4 * d)) + 2 * seq * seq * d


def _same_shape(s: Shape, p: Params, where: str) -> Shape:
    return s


def _activation(s: Shape, p: Params) -> nn.Module:
    from torch import nn

    kinds: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
    return kinds[p["fn"]]()


def _norm(s: Shape, p: Params) -> nn.Module:
    from torch import nn

    if p["kind"] == "layer":
        return nn.LayerNorm(s[-1])
    if len(s) == 3:
        return nn.BatchNorm2d(s[0])
    return nn.BatchNorm1d(s[0])


def _conv_shape(s: Shape, p: Params, where: str) -> Shape:
    _rank(s, 3, "conv2d", where)
    k, stride, pad = p["kernel"], p["stride"], p["padding"]
    h = (s[1] + 2 * pad - k) // stride + 1
    w = (s[2] + 2 * pad - k) // stride + 1
    if h < 1 or w < 1:
        raise InvalidInput(
            f"conv2d kernel {k} does not fit an input of {s[1]}x{s[2]}", field=f"{where}.kernel"
        )
    return (_width(p["out_channels"], f"{where}.out_channels"), h, w)


def _conv(s: Shape, p: Params) -> nn.Module:
    from torch import nn

    return nn.Conv2d(s[0], p["out_channels"], p["kernel"], stride=p["stride"], padding=p["padding"])


def _flatten_shape(s: Shape, p: Params, where: str) -> Shape:
    return (math.prod(s),)


def _flatten(s: Shape, p: Params) -> nn.Module:
    from torch import nn

    return nn.Flatten()


def _reshape_shape(s: Shape, p: Params, where: str) -> Shape:
    target = p["shape"]
    if not all(isinstance(d, int) and d > 0 for d in target):
        raise InvalidInput("reshape's shape must be positive integers", field=f"{where}.shape")
    if math.prod(target) != math.prod(s):
        raise InvalidInput(
            f"cannot reshape {list(s)} ({math.prod(s)} values) to {target}", field=f"{where}.shape"
        )
    return tuple(target)


def _reshape(s: Shape, p: Params) -> nn.Module:
    from torch import nn

    return (
        nn.Unflatten(1, tuple(p["shape"]))
        if len(s) == 1
        else nn.Sequential(nn.Flatten(), nn.Unflatten(1, tuple(p["shape"])))
    )


def _residual_shape(s: Shape, p: Params, where: str) -> Shape:
    _rank(s, 1, "residual_mlp", where)
    _width(p["hidden"], f"{where}.hidden")
    return s


def _residual(s: Shape, p: Params) -> nn.Module:
    from phage.training.modules import ResidualMLP

    return ResidualMLP(s[0], p["hidden"])


def _transformer_shape(s: Shape, p: Params, where: str) -> Shape:
    _rank(s, 2, "transformer_block", where)
    if s[1] % p["heads"]:
        raise InvalidInput(
            f"model width {s[1]} is not divisible by heads={p['heads']}", field=f"{where}.heads"
        )
    _width(p["ff"] or 4 * s[1], f"{where}.ff")
    return s


def _transformer(s: Shape, p: Params) -> nn.Module:
    from torch import nn

    return nn.TransformerEncoderLayer(
        d_model=s[1], nhead=p["heads"], dim_feedforward=p["ff"] or 4 * s[1], dropout=0.0, batch_first=True
    )


register_block(
    BlockType(
        "linear",
        {
            "out_features": Param(int, required=True, minimum=1),
            "in_features": Param(int, minimum=1),
            "bias": Param(bool, default=True),
        },
        _linear_shape,
        _linear,
        _matmul_cost,
    )
)
register_block(
    BlockType(
        "activation",
        {"fn": Param(str, default="relu", choices=("relu", "gelu", "tanh", "sigmoid"))},
        _same_shape,
        _activation,
    )
)
register_block(
    BlockType("norm", {"kind": Param(str, default="layer", choices=("layer", "batch"))}, _same_shape, _norm)
)
register_block(
    BlockType(
        "conv2d",
        {
            "out_channels": Param(int, required=True, minimum=1),
            "kernel": Param(int, default=3, minimum=1),
            "stride": Param(int, default=1, minimum=1),
            "padding": Param(int, default=0, minimum=0),
        },
        _conv_shape,
        _conv,
        _conv_cost,
    )
)
register_block(BlockType("flatten", {}, _flatten_shape, _flatten))
register_block(BlockType("reshape", {"shape": Param(list, required=True)}, _reshape_shape, _reshape))
register_block(
    BlockType(
        "residual_mlp",
        {"hidden": Param(int, required=True, minimum=1)},
        _residual_shape,
        _residual,
        _residual_cost,
    )
)
register_block(
    BlockType(
        "transformer_block",
        {"heads": Param(int, default=1, minimum=1), "ff": Param(int, minimum=1)},
        _transformer_shape,
        _transformer,
        _transformer_cost,
    )
)

"""A network spec: a graph of VNodes, validated, with every shape known before anything runs.

A spec is JSON or YAML::

    name: digits
    input: {shape: [64]}
    classes: 10
    optimizer: {kind: adam, lr: 0.001}
    vnodes:
      - id: stem
        blocks: [{type: linear, out_features: 128}, {type: activation}]
        objective: {loss: cross_entropy, head: linear}     # the VNode's local loss
      - id: out
        inputs: [stem]                                     # default: the previous VNode
        blocks: [{type: linear, out_features: 10}]
        objective: {loss: cross_entropy, head: none}       # its own output is the prediction
    output: out

Edges carry activations forward; a VNode with several inputs concatenates them on
the last axis (``combine: concat``) or adds them (``combine: add``). Every error
names the field it is about, e.g. ``vnodes[1].blocks[0].out_features``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from phage.errors import InvalidInput
from phage.training.blocks import Shape, block_type

MAX_VNODES = 64
MAX_BLOCKS_PER_VNODE = 32
MAX_CLASSES = 100_000
INPUT = "input"
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_LOSSES = ("cross_entropy", "mse")
_HEADS = ("linear", "none")
_OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """One block of a VNode, its parameters resolved against the registry."""

    type: str
    params: Mapping[str, Any]
    in_shape: Shape
    out_shape: Shape


@dataclass(frozen=True, slots=True)
class ObjectiveSpec:
    """A VNode's local objective: an auxiliary head (or none) and a loss."""

    loss: str = "cross_entropy"
    head: str = "linear"


@dataclass(frozen=True, slots=True)
class VNodeSpec:
    """One virtual node: its inputs, its blocks, its local objective."""

    id: str
    inputs: tuple[str, ...]
    combine: str
    blocks: tuple[BlockSpec, ...]
    objective: ObjectiveSpec
    in_shape: Shape
    out_shape: Shape


@dataclass(frozen=True, slots=True)
class OptimizerSpec:
    """The optimizer every VNode runs on its own parameters."""

    kind: str = "adam"
    lr: float = 1e-3


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """A validated network: VNodes in a topological order (inputs before the VNodes that read them)."""

    name: str
    input_shape: Shape
    classes: int
    vnodes: tuple[VNodeSpec, ...]
    output: str
    optimizer: OptimizerSpec
    raw: Mapping[str, Any]
    """The spec as given (kept so a checkpoint or a download can carry it)."""

    def vnode(self, vnode_id: str) -> VNodeSpec:
        """The VNode called ``vnode_id``."""
        for v in self.vnodes:
            if v.id == vnode_id:
                return v
        raise InvalidInput(f"no VNode {vnode_id!r}", field="vnode")

    def consumers(self, vnode_id: str) -> list[str]:
        """VNodes that read ``vnode_id``'s output."""
        return [v.id for v in self.vnodes if vnode_id in v.inputs]

    def producers(self, vnode_id: str) -> list[str]:
        """VNodes whose output ``vnode_id`` reads (not the dataset)."""
        return [s for s in self.vnode(vnode_id).inputs if s != INPUT]

    def cost(self, vnode_id: str) -> int:
        """Multiply-adds per row through a VNode's blocks and head: an estimate, to balance placement."""
        v = self.vnode(vnode_id)
        body = sum(block_type(b.type, "type").row_cost(b.in_shape, b.out_shape, b.params) for b in v.blocks)
        head = v.out_shape[-1] * self.classes if v.objective.head == "linear" else 0
        return body + head

    def ancestors(self, vnode_id: str) -> list[str]:
        """VNodes whose output reaches ``vnode_id``, in the spec's (topological) order."""
        wanted = {s for s in self.vnode(vnode_id).inputs if s != INPUT}
        for v in reversed(self.vnodes):
            if v.id in wanted:
                wanted.update(s for s in v.inputs if s != INPUT)
        return [v.id for v in self.vnodes if v.id in wanted]


def load_spec_text(text: str) -> NetworkSpec:
    """Parse a spec from JSON or YAML text."""
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidInput(f"the spec is neither JSON nor YAML: {exc}", field="spec") from None
    return parse_spec(raw)


def _obj(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{where} must be an object", field=where)
    return raw


def _shape(raw: Any, where: str) -> Shape:
    if (
        not isinstance(raw, list)
        or not 1 <= len(raw) <= 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1 << 16 for d in raw)
    ):
        raise InvalidInput("a shape is a list of 1 to 3 positive integers (without the batch)", field=where)
    return tuple(raw)


def _objective(raw: Any, where: str) -> ObjectiveSpec:
    if raw is None:
        return ObjectiveSpec()
    o = _obj(raw, where)
    unknown = sorted(set(o) - {"loss", "head"})
    if unknown:
        raise InvalidInput(f"unknown objective field {unknown[0]!r}", field=f"{where}.{unknown[0]}")
    loss, head = o.get("loss", "cross_entropy"), o.get("head", "linear")
    if loss not in _LOSSES:
        raise InvalidInput(f"loss must be one of {list(_LOSSES)}", field=f"{where}.loss")
    if head not in _HEADS:
        raise InvalidInput(f"head must be one of {list(_HEADS)}", field=f"{where}.head")
    return ObjectiveSpec(loss=loss, head=head)


def _combined_shape(shapes: Sequence[Shape], combine: str, where: str) -> Shape:
    if len(shapes) == 1:
        return shapes[0]
    if combine == "add":
        if len(set(shapes)) != 1:
            raise InvalidInput(
                f"combine=add needs inputs of one shape, got {[list(s) for s in shapes]}", field=where
            )
        return shapes[0]
    if len({s[:-1] for s in shapes}) != 1:
        raise InvalidInput(
            f"combine=concat needs inputs differing only in their last axis, got {[list(s) for s in shapes]}",
            field=where,
        )
    return (*shapes[0][:-1], sum(s[-1] for s in shapes))


def _order(raws: list[Mapping[str, Any]], inputs: dict[str, tuple[str, ...]]) -> list[int]:
    """Indices of ``raws`` in topological order; raises on a cycle."""
    index = {str(r["id"]): i for i, r in enumerate(raws)}
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    order: list[int] = []

    def visit(vid: str, path: list[str]) -> None:
        if state.get(vid) == 2:
            return
        if state.get(vid) == 1:
            cycle = [*path[path.index(vid) :], vid]
            raise InvalidInput(
                f"the graph has a cycle: {' -> '.join(cycle)}", field=f"vnodes[{index[vid]}].inputs"
            )
        state[vid] = 1
        for src in inputs[vid]:
            if src != INPUT:
                visit(src, [*path, vid])
        state[vid] = 2
        order.append(index[vid])

    for raw in raws:
        visit(str(raw["id"]), [])
    return order


def parse_spec(raw: Any) -> NetworkSpec:
    """Validate a spec (already parsed from JSON/YAML) and infer every shape."""
    top = _obj(raw, "spec")
    unknown = sorted(set(top) - {"name", "input", "classes", "vnodes", "output", "optimizer"})
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}", field=unknown[0])
    name = top.get("name", "network")
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise InvalidInput("name must be a string of 1 to 128 characters", field="name")
    input_shape = _shape(_obj(top.get("input"), "input").get("shape"), "input.shape")
    classes = top.get("classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or not 1 < classes <= MAX_CLASSES:
        raise InvalidInput(f"classes must be an integer from 2 to {MAX_CLASSES}", field="classes")
    raws = top.get("vnodes")
    if not isinstance(raws, list) or not raws:
        raise InvalidInput("vnodes must be a non-empty list", field="vnodes")
    if len(raws) > MAX_VNODES:
        raise InvalidInput(f"at most {MAX_VNODES} VNodes, got {len(raws)}", field="vnodes")

    vraws: list[Mapping[str, Any]] = []
    inputs: dict[str, tuple[str, ...]] = {}
    for i, r in enumerate(raws):
        v = _obj(r, f"vnodes[{i}]")
        bad = sorted(set(v) - {"id", "inputs", "combine", "blocks", "objective"})
        if bad:
            raise InvalidInput(f"unknown VNode field {bad[0]!r}", field=f"vnodes[{i}].{bad[0]}")
        vid = v.get("id")
        if not isinstance(vid, str) or not _ID.fullmatch(vid) or vid == INPUT:
            raise InvalidInput(
                "a VNode id is 1-64 letters, digits, '_' or '-', starting with a letter (not 'input')",
                field=f"vnodes[{i}].id",
            )
        if vid in inputs:
            raise InvalidInput(f"VNode id {vid!r} is used twice", field=f"vnodes[{i}].id")
        ins = v.get("inputs", [INPUT if i == 0 else str(raws[i - 1].get("id"))])
        if not isinstance(ins, list) or not ins or not all(isinstance(s, str) for s in ins):
            raise InvalidInput("inputs must be a non-empty list of VNode ids", field=f"vnodes[{i}].inputs")
        if len(set(ins)) != len(ins):
            raise InvalidInput("an input is listed twice", field=f"vnodes[{i}].inputs")
        inputs[vid] = tuple(ins)
        vraws.append(v)
    for i, v in enumerate(vraws):
        for src in inputs[str(v["id"])]:
            if src != INPUT and src not in inputs:
                raise InvalidInput(f"input {src!r} is no VNode of this network", field=f"vnodes[{i}].inputs")

    shapes: dict[str, Shape] = {INPUT: input_shape}
    built: dict[str, VNodeSpec] = {}
    order = _order(vraws, inputs)
    for i in order:
        v = vraws[i]
        vid, where = str(v["id"]), f"vnodes[{i}]"
        combine = v.get("combine", "concat")
        if combine not in ("concat", "add"):
            raise InvalidInput("combine must be 'concat' or 'add'", field=f"{where}.combine")
        shape = _combined_shape([shapes[s] for s in inputs[vid]], combine, f"{where}.inputs")
        in_shape = shape
        braws = v.get("blocks")
        if not isinstance(braws, list) or not braws:
            raise InvalidInput("blocks must be a non-empty list", field=f"{where}.blocks")
        if len(braws) > MAX_BLOCKS_PER_VNODE:
            raise InvalidInput(f"at most {MAX_BLOCKS_PER_VNODE} blocks a VNode", field=f"{where}.blocks")
        blocks: list[BlockSpec] = []
        for j, b in enumerate(braws):
            bwhere = f"{where}.blocks[{j}]"
            braw = dict(_obj(b, bwhere))
            kind = braw.pop("type", None)
            if not isinstance(kind, str):
                raise InvalidInput("every block needs a 'type'", field=f"{bwhere}.type")
            btype = block_type(kind, f"{bwhere}.type")
            params = btype.resolve(braw, bwhere)
            out = btype.out_shape(shape, params, bwhere)
            blocks.append(BlockSpec(kind, params, shape, out))
            shape = out
        objective = _objective(v.get("objective"), f"{where}.objective")
        if objective.head == "none" and shape != (classes,):
            raise InvalidInput(
                f"a VNode with head 'none' must output [{classes}] (the classes), not {list(shape)}",
                field=f"{where}.objective.head",
            )
        shapes[vid] = shape
        built[vid] = VNodeSpec(vid, inputs[vid], combine, tuple(blocks), objective, in_shape, shape)

    output = top.get("output", str(vraws[-1]["id"]))
    if output not in built:
        raise InvalidInput(f"output {output!r} is no VNode of this network", field="output")
    opt = _obj(top.get("optimizer", {}), "optimizer")
    kind, lr = opt.get("kind", "adam"), opt.get("lr", 1e-3)
    if kind not in _OPTIMIZERS:
        raise InvalidInput(f"optimizer kind must be one of {list(_OPTIMIZERS)}", field="optimizer.kind")
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not 0 < lr <= 10:
        raise InvalidInput("optimizer lr must be a number in (0, 10]", field="optimizer.lr")
    return NetworkSpec(
        name=name,
        input_shape=input_shape,
        classes=classes,
        vnodes=tuple(built[str(vraws[i]["id"])] for i in order),
        output=output,
        optimizer=OptimizerSpec(kind, float(lr)),
        raw=top,
    )

"""Network specs: shapes inferred, and every bad spec refused with the field it is about."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from phage.errors import InvalidInput
from phage.training.blocks import BlockType, Param, register_block
from phage.training.spec import load_spec_text, parse_spec

BASE: dict[str, Any] = {
    "name": "t",
    "input": {"shape": [64]},
    "classes": 10,
    "vnodes": [
        {"id": "a", "blocks": [{"type": "linear", "out_features": 32}, {"type": "activation"}]},
        {"id": "b", "blocks": [{"type": "residual_mlp", "hidden": 64}]},
        {"id": "out", "blocks": [{"type": "linear", "out_features": 10}], "objective": {"head": "none"}},
    ],
}


def spec(**changes: Any) -> dict[str, Any]:
    s = copy.deepcopy(BASE)
    s.update(changes)
    return s


def refused(raw: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse_spec(raw)
    return info.value


def test_chain_shapes_are_inferred_and_inputs_default_to_the_previous_vnode() -> None:
    net = parse_spec(spec())
    assert [v.id for v in net.vnodes] == ["a", "b", "out"]
    assert net.vnode("b").inputs == ("a",) and net.vnode("a").inputs == ("input",)
    assert net.vnode("a").out_shape == (32,) and net.vnode("out").out_shape == (10,)
    assert net.output == "out"


def test_dag_with_concat_and_add_and_topological_order() -> None:
    raw = spec(
        vnodes=[
            {
                "id": "out",
                "inputs": ["l", "r"],
                "blocks": [{"type": "linear", "out_features": 10}],
                "objective": {"head": "none"},
            },
            {"id": "l", "inputs": ["input"], "blocks": [{"type": "linear", "out_features": 16}]},
            {"id": "r", "inputs": ["input"], "blocks": [{"type": "linear", "out_features": 8}]},
        ],
        output="out",
    )
    net = parse_spec(raw)
    order = [v.id for v in net.vnodes]
    assert order.index("out") > order.index("l") and order.index("out") > order.index("r")
    assert net.vnode("out").in_shape == (24,)
    raw["vnodes"][0]["combine"] = "add"
    assert refused(raw).field == "vnodes[0].inputs"


def test_conv_and_transformer_shapes() -> None:
    net = parse_spec(
        spec(
            input={"shape": [1, 8, 8]},
            vnodes=[
                {
                    "id": "c",
                    "blocks": [
                        {"type": "conv2d", "out_channels": 4, "kernel": 3, "padding": 1},
                        {"type": "norm", "kind": "batch"},
                        {"type": "activation"},
                    ],
                },
                {
                    "id": "t",
                    "blocks": [
                        {"type": "reshape", "shape": [16, 16]},
                        {"type": "transformer_block", "heads": 2},
                    ],
                },
                {
                    "id": "out",
                    "blocks": [{"type": "flatten"}, {"type": "linear", "out_features": 10}],
                    "objective": {"head": "none"},
                },
            ],
        )
    )
    assert net.vnode("c").out_shape == (4, 8, 8)
    assert net.vnode("t").out_shape == (16, 16)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            lambda s: s["vnodes"][1]["blocks"].__setitem__(
                0, {"type": "linear", "in_features": 99, "out_features": 4}
            ),
            "vnodes[1].blocks[0].in_features",
        ),
        (
            lambda s: s["vnodes"][1]["blocks"].__setitem__(0, {"type": "warp_drive"}),
            "vnodes[1].blocks[0].type",
        ),
        (lambda s: s["vnodes"][0].__setitem__("inputs", ["out"]), "vnodes[0].inputs"),
        (lambda s: s["vnodes"][1].__setitem__("inputs", ["nope"]), "vnodes[1].inputs"),
        (lambda s: s["vnodes"][1].__setitem__("id", "a"), "vnodes[1].id"),
        (lambda s: s["vnodes"][2]["blocks"][0].__setitem__("out_features", 7), "vnodes[2].objective.head"),
        (
            lambda s: s["vnodes"][0]["blocks"][0].__setitem__("out_features", "many"),
            "vnodes[0].blocks[0].out_features",
        ),
        (lambda s: s["vnodes"][0]["blocks"][0].__setitem__("colour", 3), "vnodes[0].blocks[0].colour"),
        (
            lambda s: s["vnodes"][0]["blocks"][0].__setitem__("out_features", 10**9),
            "vnodes[0].blocks[0].out_features",
        ),
        (lambda s: s.__setitem__("classes", 1), "classes"),
        (lambda s: s.__setitem__("output", "ghost"), "output"),
        (lambda s: s.__setitem__("vnodes", []), "vnodes"),
        (lambda s: s.__setitem__("optimizer", {"kind": "adam", "lr": -1}), "optimizer.lr"),
        (lambda s: s.__setitem__("input", {"shape": [0]}), "input.shape"),
        (lambda s: s.__setitem__("extra", 1), "extra"),
    ],
)
def test_bad_specs_name_the_field(change: Any, field: str) -> None:
    raw = spec()
    change(raw)
    assert refused(raw).field == field


def test_a_cycle_is_named() -> None:
    raw = spec()
    raw["vnodes"][0]["inputs"] = ["b"]
    err = refused(raw)
    assert "cycle" in err.message
    assert "a -> b -> a" in err.message or "b -> a -> b" in err.message


def test_yaml_and_json_text_and_garbage() -> None:
    text = (Path(__file__).parents[2] / "examples" / "digits.yaml").read_text()
    assert load_spec_text(text).name == "digits-mlp"
    with pytest.raises(InvalidInput) as info:
        load_spec_text("{not: [valid")
    assert info.value.field == "spec"


def test_registry_is_extensible() -> None:
    register_block(
        BlockType(
            "double",
            {"k": Param(int, default=2, minimum=1)},
            lambda s, p, w: (s[0] * p["k"],),
            lambda s, p: __import__("torch").nn.Identity(),
        )
    )
    raw = spec()
    raw["vnodes"][1]["blocks"] = [{"type": "double", "k": 3}]
    assert parse_spec(raw).vnode("b").out_shape == (96,)


def test_who_is_wrong_about_a_step() -> None:
    from phage.coordinator.training_checks import judge

    trusted = {"T"}.__contains__
    assert judge("a", {"T": "a"}, trusted) == ([], "a")
    assert judge("a", {"T": "b"}, trusted) == (["host"], "b")
    assert judge("a", {"U1": "a"}, trusted) == ([], "a")  # host and one checker agree
    assert judge("a", {"U1": "b"}, trusted) is None  # one against one: ask a third
    assert judge("a", {"U1": "b", "U2": "b"}, trusted) == (["host"], "b")
    assert judge("a", {"U1": "b", "U2": "a"}, trusted) == (["U1"], "a")
    assert judge("a", {"U1": "b", "U2": "c"}, trusted) is None

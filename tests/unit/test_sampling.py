"""Picking tokens, and the sampling a ring's driver hands its last node: the same pick in both places."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from phage.dataplane.sampling import Sampling, new_generator, pick, put_sampling, take_sampling  # noqa: E402
from phage.errors import InvalidInput  # noqa: E402
from phage.protocol.v1 import dataplane_pb2 as dp  # noqa: E402


def test_a_node_given_the_drivers_generator_state_picks_the_same_tokens() -> None:
    logits = torch.randn(50)
    rule = Sampling(temperature=0.8, top_p=0.9, seed=3)
    driver = new_generator(3)
    pick(logits, rule, driver)  # the driver has already drawn once
    frame = dp.Frame()
    put_sampling(frame, rule, driver)
    taken = take_sampling(frame, None)
    assert taken is not None
    node_rule, node_generator = taken
    assert (node_rule.temperature, node_rule.top_p) == (0.8, 0.9)
    picks = [(pick(logits, rule, driver), pick(logits, node_rule, node_generator)) for _ in range(20)]
    assert all(a == b for a, b in picks) and len({a for a, _ in picks}) > 1


def test_a_temperature_too_small_to_divide_by_picks_greedily() -> None:
    logits = torch.randn(50)
    assert pick(logits, Sampling(temperature=1e-40), new_generator(0)) == int(logits.argmax())


@pytest.mark.parametrize(
    ("strings", "field", "message"),
    [
        ({"temperature": "hot"}, "temperature", "temperature is not a number"),
        ({"temperature": "1000"}, "temperature", "temperature must be between 0 and 100"),
        ({"temperature": "nan"}, "temperature", "temperature must be between 0 and 100"),
        ({"temperature": "0.5", "top_p": "0"}, "top_p", "top_p must be above 0"),
        ({"temperature": "0.5", "top_p": "2"}, "top_p", "top_p must be between 0 and 1"),
        ({"temperature": "0.5"}, "rng", "needs the generator's state"),
        ({"temperature": "0.5", "rng": "@@@"}, "rng", "not a generator's state"),
        ({"temperature": "0.5", "rng": "AAAA"}, "rng", "not a generator's state"),
        ({"temperature": "0.5", "rng": "A" * 100_000}, "rng", "at most 65536 bytes"),
    ],
)
def test_bad_sampling_on_a_request_is_refused_naming_the_field(
    strings: dict[str, str], field: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        take_sampling(dp.Frame(strings=strings), None)
    assert caught.value.field == field


def test_a_request_that_asks_no_pick_gets_none() -> None:
    assert take_sampling(dp.Frame(strings={"model": "m"}), None) is None

"""Stages of a sharded model, chained in one process, reproduce the whole model's greedy output."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from phage.domain.blocks import BlockRange  # noqa: E402
from phage.errors import InvalidInput  # noqa: E402
from phage.node.engines.tinymodel import make_tiny_model  # noqa: E402
from phage.node.stage import StageModel  # noqa: E402

PROMPT = [5, 6, 7, 8, 9, 10]
STEPS = 24


@pytest.fixture(scope="module")
def model8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny8", layers=8, name="tiny8")


@pytest.fixture(scope="module")
def reference(model8: Path) -> list[int]:
    from transformers import AutoModelForCausalLM

    whole = AutoModelForCausalLM.from_pretrained(model8).eval()
    ids = torch.tensor([PROMPT])
    out = whole.generate(ids, max_new_tokens=STEPS, do_sample=False, min_new_tokens=STEPS)
    return [int(t) for t in out[0, len(PROMPT) :]]


def greedy(stages: list[tuple[StageModel, int]], steps: int = STEPS) -> list[int]:
    tokens: list[int] = []
    x = torch.tensor(PROMPT)
    for _ in range(steps):
        h = x
        for stage, start in stages:
            h = stage.forward("s", h, start=start)
        tokens.append(int(h.argmax()))
        x = torch.tensor([tokens[-1]])
    return tokens


@pytest.mark.parametrize(
    "cuts",
    [[0, 8], [0, 4, 8], [0, 3, 8], [0, 1, 5, 8], [0, 2, 4, 6, 8], [0, 1, 2, 7, 8]],
    ids=lambda c: "-".join(map(str, c)),
)
def test_chained_stages_match_the_whole_model(model8: Path, reference: list[int], cuts: list[int]) -> None:
    stages = [(StageModel(model8, BlockRange(a, b)), a) for a, b in itertools.pairwise(cuts)]
    assert greedy(stages) == reference
    assert stages[0][0].first and stages[-1][0].last
    assert stages[0][0].session_length("s") == len(PROMPT) + STEPS - 1


def test_overlapping_ranges_skip_blocks_already_run(model8: Path, reference: list[int]) -> None:
    # 0:5 then 3:8 entered at block 5: the second stage skips its blocks 3 and 4.
    stages = [(StageModel(model8, BlockRange(0, 5)), 0), (StageModel(model8, BlockRange(3, 8)), 5)]
    assert greedy(stages) == reference


def test_a_stage_loads_only_its_blocks(model8: Path) -> None:
    whole = StageModel(model8, BlockRange(0, 8)).memory_bytes()
    middle = StageModel(model8, BlockRange(3, 5))
    assert not middle.first and not middle.last
    assert middle.memory_bytes() < whole / 3  # two of eight blocks, no embeddings or head
    with pytest.raises(InvalidInput, match="outside the checkpoint"):
        StageModel(model8, BlockRange(4, 9))
    with pytest.raises(InvalidInput, match="not in this stage"):
        middle.forward("s", torch.zeros(1, 1, middle.hidden_size), start=6)

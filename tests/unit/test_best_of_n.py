"""Best-of-N at the unit level: a controllable engine, the real executor and sandbox, the settle rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from phage.domain import TaskResult, TaskState
from phage.domain.generate import GenerateSpec, extract_output
from phage.domain.settle import Candidate, Counters, choose, next_step
from phage.errors import InvalidInput
from phage.node.engines import Engine, GenerationRequest
from phage.node.engines.base import Delta
from phage.node.executor import JobExecutor
from phage.sandbox.none import NoneSandbox


class ScriptedEngine(Engine):
    """Returns the completions it was given, in order, with their token counts."""

    name = "scripted"

    def __init__(self, outputs: list[tuple[str, int]]) -> None:
        self.outputs = list(outputs)
        self.requests: list[GenerationRequest] = []

    @property
    def model(self) -> str:
        return "scripted-model"

    async def start(self) -> None:
        return None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.requests.append(request)
        text, tokens = self.outputs.pop(0)
        yield Delta(text)
        yield Delta("", "stop", prompt_tokens=3, completion_tokens=tokens)


SPEC = GenerateSpec(
    prompt="write add",
    model="scripted-model",
    verifier="grep -q 'return a + b' solution.py",
    max_tokens=64,
    temperature=0.5,
    output_path="solution.py",
    extract="code",
    timeout_s=10,
)


async def _attempts(tmp_path: Path, outputs: list[tuple[str, int]]) -> list[Candidate]:
    engine = ScriptedEngine(outputs)
    executor = JobExecutor(tmp_path / "scratch", 4096)
    out = []
    for i in range(len(outputs)):
        result, files = await executor.run_generate(NoneSandbox(), f"a{i}", SPEC, None, engine, 1 << 20)
        assert files[0].path == "solution.py"
        out.append(Candidate(f"a{i}", float(i), result))
        executor.cleanup(f"a{i}")
    assert engine.requests[0].max_tokens == 64 and engine.requests[0].temperature == 0.5
    return out


async def test_keeps_the_passing_attempt_with_fewest_tokens(tmp_path: Path) -> None:
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    attempts = await _attempts(
        tmp_path,
        [(good + "\n# long explanation", 90), ("def add(a, b): pass", 5), (good, 40), (good, 40)],
    )
    assert [a.result.passed for a in attempts] == [True, False, True, True]
    best, reason = choose(attempts)
    assert best is not None and reason == ""
    assert best.attempt_id == "a2", "fewest tokens among passing; the earlier of a tie"
    assert best.result.output_text == "def add(a, b):\n    return a + b\n"  # extract=code took the block


async def test_fails_with_every_reason_when_none_pass(tmp_path: Path) -> None:
    attempts = await _attempts(tmp_path, [("nope", 3), ("still no", 4)])
    best, reason = choose(attempts)
    assert best is None
    assert "no attempt passed" in reason and "a0" in reason and "a1" in reason


def test_next_step_waits_for_all_replicas_then_settles() -> None:
    # best-of-3: one completed, two still running -> nothing to do yet
    assert not next_step(Counters(2, 1, 3, 3, 3), completed_now=True).settle
    assert next_step(Counters(0, 3, 3, 3, 3), completed_now=True).settle


def test_lost_attempt_is_replaced_while_budget_lasts_then_fails() -> None:
    step = next_step(Counters(0, 0, 1, 1, 3), completed_now=False, reason="node died")
    assert step.requeue and step.waiting_state is TaskState.QUEUED
    spent = next_step(Counters(0, 0, 1, 3, 3), completed_now=False, reason="node died")
    assert not spent.requeue and "node died" in spent.fail_reason and "3 of 3" in spent.fail_reason


def test_spent_budget_settles_on_what_completed() -> None:
    step = next_step(Counters(0, 2, 3, 9, 3), completed_now=False, reason="lost")
    assert step.settle


def test_choose_single_job_reports_exit_code() -> None:
    best, reason = choose([Candidate("a", 0.0, TaskResult(exit_code=2))])
    assert best is None and reason == "exited with code 2"


def test_extract_code_falls_back_to_text() -> None:
    assert extract_output("no fences here", "code") == "no fences here"
    assert extract_output("x\n```\nprint(1)\n```\n```\nprint(2)\n```", "code") == "print(1)\n"


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("prompt", "", "prompt"),
        ("model", "bad model name!", "model"),
        ("verifier", "", "verifier"),
        ("n", 0, "between 1 and 64"),
        ("n", 65, "between 1 and 64"),
        ("temperature", 3, "between 0 and 2"),
        ("output_path", "../escape.txt", ".."),
        ("extract", "json", "extract"),
        ("distinct", "never", "distinct"),
        ("check_every_stage", "yes", "true or false"),
    ],
)
def test_generate_spec_rejections_name_the_field(field: str, value: object, words: str) -> None:
    data = {"prompt": "p", "model": "m", "verifier": "true", field: value}
    with pytest.raises(InvalidInput) as err:
        GenerateSpec.parse(data)
    assert err.value.field == field and words in err.value.message


def test_check_every_stage_is_kept_only_when_asked() -> None:
    """A whole model's stored spec (and so its input hash) is unchanged by the sharded-only option."""
    plain = GenerateSpec.parse({"prompt": "p", "model": "m", "verifier": "true"})
    assert "check_every_stage" not in plain.to_dict()
    asked = GenerateSpec.parse({"prompt": "p", "model": "m", "verifier": "true", "check_every_stage": True})
    assert asked.check_every_stage and asked.to_dict()["check_every_stage"] is True

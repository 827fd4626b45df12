"""Generate tasks: a prompt for a model, a verifier, best-of-N.

The model's output is written into the task's workspace at ``output_path`` and
the ``verifier`` shell command runs there in a sandbox; exit 0 is a pass. With
``n`` > 1 the task goes to N nodes and the passing result with the fewest
completion tokens is kept.

A generate task for a *sharded* model runs through a chain of nodes driven by the
coordinator (``coordinator/sharded_tasks.py``); ``check_every_stage`` then asks for
every step of every hop to be recomputed on another node holding the same blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from phage.domain.manifest import safe_relative_path
from phage.errors import InvalidInput

MAX_PROMPT_CHARS = 200_000
MAX_VERIFIER_CHARS = 8_192
MAX_N = 64
MAX_TOKENS = 32_768
DISTINCT_CHOICES = ("wait", "prefer")
_MODEL = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,200}$")
_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True, slots=True)
class GenerateSpec:
    """What a generate task asks for."""

    prompt: str
    model: str
    verifier: str
    n: int = 1
    max_tokens: int = 256
    temperature: float = 0.8
    output_path: str = "output.txt"
    extract: str = "text"
    """``text``: the whole completion; ``code``: the first fenced code block (or the whole text if none)."""
    distinct: str = "wait"
    """``wait``: the N attempts go to N distinct nodes, waiting for them; ``prefer``: repeat a node when
    fewer than N are alive."""
    timeout_s: int = 60
    """Wall-clock limit of the verifier run."""
    check_every_stage: bool = False
    """Sharded models only: recompute every step of every hop elsewhere (trusted hops too), not a sample
    of the untrusted ones'."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the task spec)."""
        return {
            "prompt": self.prompt,
            "model": self.model,
            "verifier": self.verifier,
            "n": self.n,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "output_path": self.output_path,
            "extract": self.extract,
            "distinct": self.distinct,
            "timeout_s": self.timeout_s,
            # only when asked: a whole model's spec (and what nodes are sent) stays as it was
            **({"check_every_stage": True} if self.check_every_stage else {}),
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> GenerateSpec:
        """Validate the generate fields of a task request; errors name the field and the limit."""
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidInput("prompt must be a non-empty string", field="prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidInput(f"prompt is longer than {MAX_PROMPT_CHARS} characters", field="prompt")
        model = data.get("model")
        if not isinstance(model, str) or not _MODEL.match(model):
            raise InvalidInput("model must be a model name such as 'Qwen/Qwen2.5-Coder-7B'", field="model")
        verifier = data.get("verifier")
        if not isinstance(verifier, str) or not verifier.strip():
            raise InvalidInput("verifier must be a shell command (exit 0 = pass)", field="verifier")
        if len(verifier) > MAX_VERIFIER_CHARS:
            raise InvalidInput(f"verifier is longer than {MAX_VERIFIER_CHARS} characters", field="verifier")
        n = _int(data, "n", 1, 1, MAX_N)
        max_tokens = _int(data, "max_tokens", 256, 1, MAX_TOKENS)
        temperature = data.get("temperature", 0.8)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            raise InvalidInput("temperature must be a number between 0 and 2", field="temperature")
        output_path = safe_relative_path(data.get("output_path", "output.txt"), "output_path")
        extract = data.get("extract", "text")
        if extract not in ("text", "code"):
            raise InvalidInput("extract must be 'text' or 'code'", field="extract")
        check_every_stage = data.get("check_every_stage", False)
        if not isinstance(check_every_stage, bool):
            raise InvalidInput("check_every_stage must be true or false", field="check_every_stage")
        distinct = data.get("distinct", "wait")
        if distinct not in DISTINCT_CHOICES:
            raise InvalidInput(f"distinct must be one of: {', '.join(DISTINCT_CHOICES)}", field="distinct")
        return cls(
            prompt=prompt,
            model=model,
            verifier=verifier,
            n=n,
            max_tokens=max_tokens,
            temperature=float(temperature),
            output_path=output_path,
            extract=extract,
            distinct=distinct,
            timeout_s=_int(data, "timeout_s", 60, 1, 3600),
            check_every_stage=check_every_stage,
        )


def _int(data: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer", field=name)
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be between {lo} and {hi}", field=name)
    return value


def extract_output(text: str, mode: str) -> str:
    """What gets written to the workspace: the text, or its first fenced code block."""
    if mode == "code":
        match = _FENCE.search(text)
        if match:
            return match.group(1)
    return text

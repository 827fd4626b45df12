"""Fault injection for tests and benchmarks: a real node process that lies about its job results.

``PHAGE_TEST_CORRUPT_OUTPUTS=1`` in a ``phage node``'s environment makes it replace the contents of
every output file of every job it runs before it hashes, uploads, signs and reports them: a node
that computes wrong answers and attests to them as if they were right — what quorum validation
(``domain/quorum.py``) must catch. Each corruption carries fresh random bytes, so two lying nodes
never agree with each other (independent liars; colluding ones are a different threat). A job
with no output files has its exit code flipped instead.

Why an environment variable read here and nowhere else: it keeps the hook out of ``--help``, the
config file and the protocol, so no operator turns it on by accident; only the exact value ``1``
counts, it is read once when the node starts, and a node running with it logs a warning saying
so. It is no security boundary — whoever runs a node controls its code anyway.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from phage.domain import OutputFile, TaskResult
from phage.node.engines.base import Delta
from phage.node.executor import CollectedOutput

CORRUPT_OUTPUTS_ENV = "PHAGE_TEST_CORRUPT_OUTPUTS"
CHAT_FAULT_ENV = "PHAGE_TEST_CHAT_FAULT"
CHAT_FAULTS = ("inflate_usage", "truncate", "pad")
"""How a lying node answers chats: bills 4 billion tokens for each answer, cuts each answer to
half its tokens while claiming it finished, or appends tokens the model never chose."""
INFLATED_TOKENS = 4_000_000_000

log = logging.getLogger("phage.node")


def corrupt_outputs_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Is the corrupt-outputs hook on? Logs a warning when it is."""
    on = environ.get(CORRUPT_OUTPUTS_ENV) == "1"
    if on:
        log.warning(
            "FAULT INJECTION: %s=1: this node reports WRONG outputs for every job (tests, benchmarks)",
            CORRUPT_OUTPUTS_ENV,
        )
    return on


def corrupt(result: TaskResult, outputs: list[CollectedOutput]) -> list[CollectedOutput]:
    """Rewrite each output file with different bytes and make ``result`` describe them."""
    if not outputs:
        result.exit_code = 0 if result.exit_code else 1
        return outputs
    changed = []
    for out in outputs:
        data = out.local.read_bytes() + b"\ncorrupted " + os.urandom(8).hex().encode() + b"\n"
        out.local.write_bytes(data)
        changed.append(CollectedOutput(out.path, out.local, hashlib.sha256(data).hexdigest(), len(data)))
    result.outputs = [OutputFile(o.path, o.sha256, o.size) for o in changed]
    return changed


def chat_fault(environ: Mapping[str, str] = os.environ) -> str:
    """The chat fault this node injects (``PHAGE_TEST_CHAT_FAULT``), or ""; logs a warning when one is on."""
    fault = environ.get(CHAT_FAULT_ENV, "")
    if fault not in CHAT_FAULTS:
        return ""
    log.warning(
        "FAULT INJECTION: %s=%s: this node LIES about its chat answers (tests)", CHAT_FAULT_ENV, fault
    )
    return fault


def lie(fault: str, final: Delta) -> Delta:
    """The last delta of an answer, as a lying node reports it.

    ``inflate_usage`` bills billions of tokens; ``truncate`` drops the second half of the
    answer's token ids and claims the model stopped (the text already streamed stays, as a
    node cutting answers short would send less text too — what the check sees is ids that
    do not decode to the text, or a stop without end-of-text); ``pad`` appends text the
    model never produced.
    """
    if fault == "inflate_usage":
        return replace(final, prompt_tokens=INFLATED_TOKENS, completion_tokens=INFLATED_TOKENS)
    if fault == "truncate":
        keep = final.token_ids[: max(1, len(final.token_ids) // 2)]
        if keep and keep[-1] == final.token_ids[-1] and len(final.token_ids) > 1:
            keep = keep[:-1]
        return replace(final, finish_reason="stop", completion_tokens=len(keep), token_ids=keep)
    if fault == "pad":
        return replace(final, text=final.text + " and that is all")
    return final


POISON_UPDATES_ENV = "PHAGE_TEST_POISON_UPDATES"


def poison_updates_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Is the poisoned-training-updates hook on (flipped, scaled gradients in every VNode it hosts)?"""
    on = environ.get(POISON_UPDATES_ENV) == "1"
    if on:
        log.warning(
            "FAULT INJECTION: %s=1: this node POISONS every training update it makes (tests, benchmarks)",
            POISON_UPDATES_ENV,
        )
    return on


STAGE_DELAY_ENV = "PHAGE_TEST_STAGE_DELAY_MS"


def stage_delay_s(environ: Mapping[str, str] = os.environ) -> float:
    """Extra seconds each sharded-model stage step takes (``PHAGE_TEST_STAGE_DELAY_MS``; 0 when unset).

    Slows a real node's blocks down so a test can kill it mid-generation; logs a warning when on.
    """
    raw = environ.get(STAGE_DELAY_ENV, "")
    delay = int(raw) / 1000 if raw.isdigit() else 0.0
    if delay:
        log.warning("FAULT INJECTION: %s=%s: every stage step here is slowed down", STAGE_DELAY_ENV, raw)
    return delay


NOISY_ACTIVATIONS_ENV = "PHAGE_TEST_NOISY_ACTIVATIONS"


def activation_noise(environ: Mapping[str, str] = os.environ) -> Callable[[Any], Any] | None:
    """A hook adding small noise to every activation a stage sends (``PHAGE_TEST_NOISY_ACTIVATIONS``).

    The value is the noise's size relative to the output's largest magnitude (``0.01``: 1 %): a node
    that corrupts its sharded-model activations subtly, which checked activations must catch.
    """
    raw = environ.get(NOISY_ACTIVATIONS_ENV, "")
    try:
        scale = float(raw) if raw else 0.0
    except ValueError:
        scale = 0.0
    if scale <= 0:
        return None
    log.warning("FAULT INJECTION: %s=%s: this node sends WRONG activations", NOISY_ACTIVATIONS_ENV, raw)

    def add_noise(output: Any) -> Any:
        import torch

        return output + torch.randn_like(output) * scale * output.abs().max()

    return add_noise

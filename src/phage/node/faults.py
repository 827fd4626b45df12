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
from collections.abc import Mapping

from phage.domain import OutputFile, TaskResult
from phage.node.executor import CollectedOutput

CORRUPT_OUTPUTS_ENV = "PHAGE_TEST_CORRUPT_OUTPUTS"

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

"""The HTTP API's request bodies as pydantic models, so ``/openapi.json`` describes every input.

The routes still validate with the domain parsers (``JobManifest.parse``, ``parse_task_request``),
whose errors name the exact field and limit; these models are the same rules written as a schema,
for generated clients and for the fuzzer, which draws bodies from them. A test keeps the two in
step by sending bodies drawn from these schemas and requiring that none is a server error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from phage.domain.networks import MAX_BATCH, MAX_EPOCHS, MAX_HOLDOUT_BOUND

MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_FORWARD_ROWS = 4096
"""Input rows one ``/api/networks/{id}/forward`` call may run."""


class Body(BaseModel):
    """Base of request bodies: unknown fields are refused, as the parsers refuse them."""

    model_config = ConfigDict(extra="forbid")


class ManifestBody(Body):
    """How to run a job's workspace and what to collect."""

    entrypoint: str = Field(min_length=1, max_length=4096)
    """File in the workspace to run (relative, no ``..``)."""
    interpreter: str = Field(default="python3", max_length=256)
    """Program that runs the entrypoint; empty: run it directly."""
    args: list[str] = Field(default=[], max_length=256)
    env: dict[str, str] = Field(default={}, max_length=128)
    outputs: list[str] = Field(default=[], max_length=64)
    """Globs of files to collect after the run."""
    timeout_s: int = Field(default=300, ge=1, le=MAX_TIMEOUT_S)


class TaskCreate(Body):
    """One task: a job (``manifest`` plus ``files`` or an uploaded workspace), a generate task, or a no-op."""

    kind: Literal["job", "generate", "noop"] = "job"
    manifest: ManifestBody | None = None
    files: dict[str, str] | None = None
    """Inline workspace: file name → text content."""
    priority: int = Field(default=0, ge=-1000, le=1000)
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    labels: dict[str, str] = Field(default={}, max_length=32)
    isolation: Literal["any", "none", "bwrap", "gvisor"] = "any"
    count: int = Field(default=1, ge=1)
    min_quorum: int | None = Field(default=None, ge=1, le=16)
    target_results: int | None = Field(default=None, ge=1, le=16)
    prompt: str | None = Field(default=None, max_length=200_000)
    """Generate tasks: the prompt."""
    model: str | None = None
    """Generate tasks: the model to run it on."""
    verifier: str | None = Field(default=None, max_length=8192)
    """Generate tasks: shell command run in the workspace; exit 0 = pass."""
    n: int | None = Field(default=None, ge=1, le=64)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    temperature: float | None = Field(default=None, ge=0, le=2)
    output_path: str | None = None
    extract: Literal["text", "code"] | None = None
    distinct: Literal["wait", "prefer"] | None = None
    timeout_s: int | None = Field(default=None, ge=1)
    wait_for_model: bool | None = None


class TaskBatch(Body):
    """Several tasks in one transaction."""

    tasks: list[TaskCreate] = Field(min_length=1)


class KeyCreate(Body):
    """A new API key."""

    name: str = Field(min_length=1, max_length=100)
    role: Literal["user", "admin"] = "user"
    credit_limit_tokens: int | None = Field(default=None, ge=0, le=10**15)


class KeyUpdate(Body):
    """A key's credit limit (null lifts it), or any of its rate limits (null lifts each)."""

    credit_limit_tokens: int | None = Field(default=None, ge=0, le=10**15)
    requests_per_minute: int | None = Field(default=None, ge=1, le=10**12)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=10**12)
    max_concurrent: int | None = Field(default=None, ge=1, le=10**12)


class KeyTopUp(Body):
    """Tokens added to a key's credit balance."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tokens: int = Field(ge=1, le=10**15)


class ChatMessage(BaseModel):
    """One message of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionCreate(BaseModel):
    """An OpenAI-compatible chat completion request (the fields phage honours)."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None


class CompletionCreate(BaseModel):
    """An OpenAI-compatible text completion request: one raw prompt, the sampling settings of chat."""

    model: str
    prompt: str | list[str] = Field(min_length=1)
    """One prompt (a list must hold exactly one)."""
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=8)
    echo: bool | None = None
    """Only ``false``: the prompt is never echoed."""
    suffix: str | None = None
    """Only empty: no insertion."""
    best_of: int | None = None
    """Only 1."""


class TrainingSettings(Body):
    """How a network is trained (every setting optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    epochs: int = Field(default=10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(default=32, ge=1, le=MAX_BATCH)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    checkpoint_every: int = Field(default=20, ge=1, le=1_000_000)
    """Optimizer steps between a VNode's checkpoints."""
    check_rate: float = Field(default=0.05, ge=0, le=1)
    """Share of an untrusted node's steps recomputed on another node."""
    holdout_bound: float = Field(default=0.5, ge=0, le=MAX_HOLDOUT_BOUND)
    """How far an untrusted node's checkpoint may raise its VNode's local loss on held-out rows."""


class NetworkCreate(Body):
    """A training job: the network, the uploaded dataset it learns from, and how."""

    model_config = ConfigDict(extra="forbid", strict=True)

    spec: dict[str, Any] | str
    """The network as an object, or as JSON/YAML text."""
    dataset: str = Field(pattern="^[0-9a-f]{64}$")
    """The sha256 ``POST /api/datasets`` answered."""
    training: TrainingSettings = Field(default_factory=lambda: TrainingSettings())
    """How to train."""


class NetworkForward(Body):
    """Input rows for a trained network, each of the network's input shape."""

    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: list[Any] = Field(min_length=1, max_length=MAX_FORWARD_ROWS)

"""The HTTP API's response bodies as typed, frozen models: what the SDK returns and ``--json`` prints.

They live outside both the coordinator and the client because both speak them: the SDK parses
answers into them, and the coordinator's routes can declare them so ``/openapi.json`` describes
every body. ``extra="allow"``: a newer coordinator may add fields, and an older client keeps them
(``model_dump()`` shows them) instead of failing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

FINAL_STATES = frozenset({"verified", "failed", "cancelled"})
"""Task states that never change again."""


class ApiModel(BaseModel):
    """Base of every API body: frozen, and tolerant of fields it does not know."""

    model_config = ConfigDict(frozen=True, extra="allow")


class OutputFile(ApiModel):
    """One output file of a task, content-addressed."""

    path: str
    sha256: str
    size: int
    url: str | None = None
    """Where to download it (relative to the coordinator's URL)."""


class TaskResult(ApiModel):
    """What the accepted attempt produced."""

    exit_code: int | None = None
    outputs: list[OutputFile] = []
    stdout_tail: str = ""
    stderr_tail: str = ""
    error: str | None = None
    wall_time_s: float | None = None
    passed: bool | None = None
    """Generate tasks: whether the verifier passed."""
    output_text: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    engine: str | None = None
    model: str | None = None
    sandbox: str | None = None
    attempt_id: str | None = None
    """The attempt whose result this is (best-of-N: the one kept)."""


class Attempt(ApiModel):
    """One try of a task on one node."""

    id: str
    node_id: str
    state: str
    dispatched_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    passed: bool | None = None
    completion_tokens: int | None = None
    output_text: str | None = None
    verifier_log: str | None = None
    attested: bool | None = None
    output_sha256: str | None = None


class Task(ApiModel):
    """A task as clients see it; ``attempts`` is filled when one task is fetched."""

    id: str
    kind: str
    state: str
    priority: int = 0
    created_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    attempts_made: int = 0
    max_attempts: int = 0
    error: str | None = None
    labels: dict[str, str] = {}
    isolation: str = "any"
    manifest: dict[str, Any] | None = None
    workspace_sha256: str | None = None
    generate: dict[str, Any] | None = None
    replicas: int = 1
    quorum: dict[str, Any] | None = None
    result: TaskResult | None = None
    attempts: list[Attempt] | None = None

    @property
    def final(self) -> bool:
        """True once the task will never change again."""
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        """True when the task was verified."""
        return self.state == "verified"


class TaskRef(ApiModel):
    """A task id and its state, as a batch submit answers."""

    id: str
    state: str


class TaskPage(ApiModel):
    """Tasks newest first; pass ``next_before`` as ``before`` for the next page (None: no more)."""

    tasks: list[Task]
    next_before: float | None = None


class Node(ApiModel):
    """A node with its live figures."""

    id: str
    name: str
    state: str
    registered_at: float | None = None
    last_heartbeat: float | None = None
    heartbeat_age_s: float | None = None
    max_concurrency: int = 0
    active_tasks: int = 0
    sandboxes: list[str] = []
    loaded_model: str | None = None
    version: str = ""
    hostname: str = ""
    cpu_count: int = 0
    memory_total_bytes: int = 0
    gpus: list[dict[str, Any]] = []
    vram_total_bytes: int = 0
    vram_used_bytes: int = 0
    cpu_percent: float | None = None
    engines: list[Any] = []
    models: list[Any] = []
    trusted: bool = True
    quarantined: bool = False
    quarantine_reason: str | None = None
    reputation: dict[str, int] = {}
    admission: str = ""
    draining: bool = False
    max_concurrent_jobs: int | None = None
    concurrency_cap: int | None = None


class NodeCounts(ApiModel):
    """Nodes by liveness."""

    total: int
    online: int
    dead: int = 0


class Slots(ApiModel):
    """Task slots of the online nodes."""

    total: int
    busy: int


class Queue(ApiModel):
    """Queued work."""

    depth: int
    by_kind: dict[str, int] = {}


class PoolStatus(ApiModel):
    """``GET /api/status``: the pool at a glance."""

    version: str
    uptime_s: float
    nodes: NodeCounts
    slots: Slots
    queue: Queue
    tasks: dict[str, int]
    vram: dict[str, int] = {}


class ApiKey(ApiModel):
    """An API key without its secret."""

    id: str
    name: str
    role: str
    created_at: float | None = None
    revoked: bool = False
    credit_limit_tokens: int | None = None


class NewApiKey(ApiModel):
    """A key just made: ``key`` is its secret, shown this once."""

    id: str
    name: str
    role: str
    key: str
    credit_limit_tokens: int | None = None


class TokenCounts(ApiModel):
    """Requests and tokens in one bucket."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class KeyUsage(TokenCounts):
    """One key's usage, with breakdowns by model and by node."""

    key_id: str
    name: str = ""
    credit_limit_tokens: int | None = None
    credit_left_tokens: int | None = None
    total_tokens: int = 0
    by_model: dict[str, TokenCounts] = {}
    by_node: dict[str, TokenCounts] = {}


class WorkloadApproval(ApiModel):
    """An approved workload."""

    digest: str
    name: str = ""
    approved_at: float | None = None
    approved_by: str = ""


class WorkloadList(ApiModel):
    """``GET /api/workloads``: whether the pool runs approved workloads only, and the approvals."""

    enforced: bool
    workloads: list[WorkloadApproval]


class WorkloadDigest(ApiModel):
    """The workload digest a task would have (None: it runs no code of the submitter's)."""

    digest: str | None
    approved: bool


class Ref(ApiModel):
    """An id and a state: a task in a batch answer, or a node just removed."""

    id: str
    state: str


class TaskRefList(ApiModel):
    """A batch submit's answer."""

    tasks: list[Ref]


class NodeList(ApiModel):
    """``GET /api/nodes``."""

    nodes: list[Node]


class KeyList(ApiModel):
    """``GET /api/keys``."""

    keys: list[ApiKey]


class UsageList(ApiModel):
    """``GET /api/usage``."""

    keys: list[KeyUsage]


class ErrorBody(ApiModel):
    """Every error phage's own routes answer: the kind, a message naming the field and the limit."""

    error: str
    """The kind (``InvalidInput``, ``NotFound``, ``PermissionDenied``, …)."""
    message: str
    field: str | None = None
    """The request field at fault, when one is."""


class OpenAIErrorDetail(ApiModel):
    """The inside of an OpenAI-style error."""

    message: str
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class OpenAIErrorBody(ApiModel):
    """Errors on ``/v1``, in OpenAI's shape so its clients read them."""

    error: OpenAIErrorDetail


class ModelCard(ApiModel):
    """A model a live node serves, in OpenAI's shape."""

    id: str
    object: str = "model"
    created: int | None = None
    owned_by: str = "phage"


class ModelList(ApiModel):
    """``GET /v1/models``."""

    object: str = "list"
    data: list[ModelCard]


class ChatUsage(ApiModel):
    """Tokens a chat completion used."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoiceMessage(ApiModel):
    """The assistant's answer."""

    role: str
    content: str | None = None


class ChatChoice(ApiModel):
    """One choice of a completion."""

    index: int
    message: ChatChoiceMessage
    finish_reason: str | None = None


class ChatCompletion(ApiModel):
    """A non-streamed chat completion (``stream: true`` answers with server-sent chunks instead)."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage

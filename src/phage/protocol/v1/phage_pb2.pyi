from phage.protocol.v1 import blocks_pb2 as _blocks_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GpuInfo(_message.Message):
    __slots__ = ("model", "vram_total_bytes", "vram_used_bytes", "utilization", "temperature_c", "index")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VRAM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    VRAM_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    model: str
    vram_total_bytes: int
    vram_used_bytes: int
    utilization: float
    temperature_c: float
    index: int
    def __init__(self, model: _Optional[str] = ..., vram_total_bytes: _Optional[int] = ..., vram_used_bytes: _Optional[int] = ..., utilization: _Optional[float] = ..., temperature_c: _Optional[float] = ..., index: _Optional[int] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("hostname", "gpus", "driver_version", "cuda_version", "cpu_count", "memory_total_bytes", "sandboxes", "engines", "loaded_model", "max_concurrency", "phage_version", "name", "models", "model_memory_bytes", "can_load_models")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUDA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    PHAGE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAN_LOAD_MODELS_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    driver_version: str
    cuda_version: str
    cpu_count: int
    memory_total_bytes: int
    sandboxes: _containers.RepeatedScalarFieldContainer[str]
    engines: _containers.RepeatedScalarFieldContainer[str]
    loaded_model: str
    max_concurrency: int
    phage_version: str
    name: str
    models: _containers.RepeatedScalarFieldContainer[str]
    model_memory_bytes: int
    can_load_models: bool
    def __init__(self, hostname: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., driver_version: _Optional[str] = ..., cuda_version: _Optional[str] = ..., cpu_count: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., sandboxes: _Optional[_Iterable[str]] = ..., engines: _Optional[_Iterable[str]] = ..., loaded_model: _Optional[str] = ..., max_concurrency: _Optional[int] = ..., phage_version: _Optional[str] = ..., name: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., model_memory_bytes: _Optional[int] = ..., can_load_models: _Optional[bool] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("join_token", "identity_public_key", "csr_pem", "timestamp_unix_ms", "identity_signature", "info")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    identity_public_key: bytes
    csr_pem: bytes
    timestamp_unix_ms: int
    identity_signature: bytes
    info: NodeInfo
    def __init__(self, join_token: _Optional[str] = ..., identity_public_key: _Optional[bytes] = ..., csr_pem: _Optional[bytes] = ..., timestamp_unix_ms: _Optional[int] = ..., identity_signature: _Optional[bytes] = ..., info: _Optional[_Union[NodeInfo, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("node_id", "client_certificate_pem", "ca_certificate_pem", "heartbeat_interval_s", "missed_heartbeats_dead", "status")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MISSED_HEARTBEATS_DEAD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    client_certificate_pem: bytes
    ca_certificate_pem: bytes
    heartbeat_interval_s: float
    missed_heartbeats_dead: int
    status: str
    def __init__(self, node_id: _Optional[str] = ..., client_certificate_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., heartbeat_interval_s: _Optional[float] = ..., missed_heartbeats_dead: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class NodeMetrics(_message.Message):
    __slots__ = ("gpus", "active_tasks", "loaded_model", "cpu_percent", "memory_used_bytes", "models", "model_memory_bytes", "loaded_model_bytes")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_TASKS_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    active_tasks: int
    loaded_model: str
    cpu_percent: float
    memory_used_bytes: int
    models: _containers.RepeatedScalarFieldContainer[str]
    model_memory_bytes: int
    loaded_model_bytes: int
    def __init__(self, gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., active_tasks: _Optional[int] = ..., loaded_model: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., model_memory_bytes: _Optional[int] = ..., loaded_model_bytes: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "metrics", "running_assignment_ids", "blocks")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_ASSIGNMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    metrics: NodeMetrics
    running_assignment_ids: _containers.RepeatedScalarFieldContainer[str]
    blocks: _blocks_pb2.BlockOffer
    def __init__(self, node_id: _Optional[str] = ..., metrics: _Optional[_Union[NodeMetrics, _Mapping]] = ..., running_assignment_ids: _Optional[_Iterable[str]] = ..., blocks: _Optional[_Union[_blocks_pb2.BlockOffer, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("load_model", "cancel_assignment_ids", "unknown_assignment_ids", "heartbeat_interval_s", "node_state", "blocks")
    LOAD_MODEL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_ASSIGNMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ASSIGNMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    NODE_STATE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    load_model: str
    cancel_assignment_ids: _containers.RepeatedScalarFieldContainer[str]
    unknown_assignment_ids: _containers.RepeatedScalarFieldContainer[str]
    heartbeat_interval_s: float
    node_state: str
    blocks: _blocks_pb2.BlockAssignment
    def __init__(self, load_model: _Optional[str] = ..., cancel_assignment_ids: _Optional[_Iterable[str]] = ..., unknown_assignment_ids: _Optional[_Iterable[str]] = ..., heartbeat_interval_s: _Optional[float] = ..., node_state: _Optional[str] = ..., blocks: _Optional[_Union[_blocks_pb2.BlockAssignment, _Mapping]] = ...) -> None: ...

class FetchTaskRequest(_message.Message):
    __slots__ = ("node_id", "max_tasks", "wait_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    max_tasks: int
    wait_ms: int
    def __init__(self, node_id: _Optional[str] = ..., max_tasks: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class JobManifest(_message.Message):
    __slots__ = ("entrypoint", "interpreter", "args", "env", "outputs", "timeout_s")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    INTERPRETER_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    entrypoint: str
    interpreter: str
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    timeout_s: int
    def __init__(self, entrypoint: _Optional[str] = ..., interpreter: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., outputs: _Optional[_Iterable[str]] = ..., timeout_s: _Optional[int] = ...) -> None: ...

class TaskAssignment(_message.Message):
    __slots__ = ("assignment_id", "task_id", "kind", "manifest", "workspace", "workspace_sha256", "workspace_size", "lease_expires_unix_ms", "max_output_bytes", "isolation", "generate", "input_sha256", "request_id")
    ASSIGNMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_SHA256_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHA256_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    assignment_id: str
    task_id: str
    kind: str
    manifest: JobManifest
    workspace: bytes
    workspace_sha256: str
    workspace_size: int
    lease_expires_unix_ms: int
    max_output_bytes: int
    isolation: str
    generate: GenerateSpec
    input_sha256: str
    request_id: str
    def __init__(self, assignment_id: _Optional[str] = ..., task_id: _Optional[str] = ..., kind: _Optional[str] = ..., manifest: _Optional[_Union[JobManifest, _Mapping]] = ..., workspace: _Optional[bytes] = ..., workspace_sha256: _Optional[str] = ..., workspace_size: _Optional[int] = ..., lease_expires_unix_ms: _Optional[int] = ..., max_output_bytes: _Optional[int] = ..., isolation: _Optional[str] = ..., generate: _Optional[_Union[GenerateSpec, _Mapping]] = ..., input_sha256: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GenerateSpec(_message.Message):
    __slots__ = ("prompt", "model", "verifier", "max_tokens", "temperature", "output_path", "extract", "timeout_s")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PATH_FIELD_NUMBER: _ClassVar[int]
    EXTRACT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    model: str
    verifier: str
    max_tokens: int
    temperature: float
    output_path: str
    extract: str
    timeout_s: int
    def __init__(self, prompt: _Optional[str] = ..., model: _Optional[str] = ..., verifier: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., output_path: _Optional[str] = ..., extract: _Optional[str] = ..., timeout_s: _Optional[int] = ...) -> None: ...

class FetchTaskResponse(_message.Message):
    __slots__ = ("assignments", "cancel_assignment_ids")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_ASSIGNMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[TaskAssignment]
    cancel_assignment_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, assignments: _Optional[_Iterable[_Union[TaskAssignment, _Mapping]]] = ..., cancel_assignment_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StartTasksRequest(_message.Message):
    __slots__ = ("node_id", "assignment_ids")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    assignment_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., assignment_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StartTasksResponse(_message.Message):
    __slots__ = ("cancel_assignment_ids",)
    CANCEL_ASSIGNMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    cancel_assignment_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cancel_assignment_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class OutputFile(_message.Message):
    __slots__ = ("path", "sha256", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("node_id", "assignment_id", "task_id", "exit_code", "error", "stdout_tail", "stderr_tail", "outputs", "wall_time_ms", "sandbox", "attestation", "has_verdict", "passed", "output_text", "prompt_tokens", "completion_tokens", "engine", "model", "sandbox_sha256", "input_sha256", "output_sha256")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TAIL_FIELD_NUMBER: _ClassVar[int]
    STDERR_TAIL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    HAS_VERDICT_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHA256_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHA256_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    assignment_id: str
    task_id: str
    exit_code: int
    error: str
    stdout_tail: str
    stderr_tail: str
    outputs: _containers.RepeatedCompositeFieldContainer[OutputFile]
    wall_time_ms: int
    sandbox: str
    attestation: bytes
    has_verdict: bool
    passed: bool
    output_text: str
    prompt_tokens: int
    completion_tokens: int
    engine: str
    model: str
    sandbox_sha256: str
    input_sha256: str
    output_sha256: str
    def __init__(self, node_id: _Optional[str] = ..., assignment_id: _Optional[str] = ..., task_id: _Optional[str] = ..., exit_code: _Optional[int] = ..., error: _Optional[str] = ..., stdout_tail: _Optional[str] = ..., stderr_tail: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[OutputFile, _Mapping]]] = ..., wall_time_ms: _Optional[int] = ..., sandbox: _Optional[str] = ..., attestation: _Optional[bytes] = ..., has_verdict: _Optional[bool] = ..., passed: _Optional[bool] = ..., output_text: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., engine: _Optional[str] = ..., model: _Optional[str] = ..., sandbox_sha256: _Optional[str] = ..., input_sha256: _Optional[str] = ..., output_sha256: _Optional[str] = ...) -> None: ...

class ResultAck(_message.Message):
    __slots__ = ("accepted", "duplicate", "message", "assignment_id", "refusal")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    message: str
    assignment_id: str
    refusal: str
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., message: _Optional[str] = ..., assignment_id: _Optional[str] = ..., refusal: _Optional[str] = ...) -> None: ...

class ResultBatch(_message.Message):
    __slots__ = ("node_id", "results", "batch_signature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    batch_signature: bytes
    def __init__(self, node_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., batch_signature: _Optional[bytes] = ...) -> None: ...

class ResultBatchAck(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[ResultAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[ResultAck, _Mapping]]] = ...) -> None: ...

class MetricsSample(_message.Message):
    __slots__ = ("name", "value", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class MetricsReport(_message.Message):
    __slots__ = ("node_id", "samples")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    samples: _containers.RepeatedCompositeFieldContainer[MetricsSample]
    def __init__(self, node_id: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[MetricsSample, _Mapping]]] = ...) -> None: ...

class MetricsAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("sha256", "data", "total_size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    data: bytes
    total_size: int
    def __init__(self, sha256: _Optional[str] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class BlobRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class ChatSubscribe(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatOrder(_message.Message):
    __slots__ = ("request_id", "model", "messages", "max_tokens", "temperature", "stop", "has_seed", "seed", "cancel", "has_top_p", "top_p", "prompt", "check", "check_token_ids", "extras_json")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    HAS_SEED_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    HAS_TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    CHECK_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_JSON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    max_tokens: int
    temperature: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    has_seed: bool
    seed: int
    cancel: bool
    has_top_p: bool
    top_p: float
    prompt: str
    check: bool
    check_token_ids: _containers.RepeatedScalarFieldContainer[int]
    extras_json: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., has_seed: _Optional[bool] = ..., seed: _Optional[int] = ..., cancel: _Optional[bool] = ..., has_top_p: _Optional[bool] = ..., top_p: _Optional[float] = ..., prompt: _Optional[str] = ..., check: _Optional[bool] = ..., check_token_ids: _Optional[_Iterable[int]] = ..., extras_json: _Optional[str] = ...) -> None: ...

class ChatChunk(_message.Message):
    __slots__ = ("request_id", "node_id", "text", "finish_reason", "prompt_tokens", "completion_tokens", "error", "token_ids", "score", "tool_calls_json", "error_code")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    node_id: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    score: ChatScore
    tool_calls_json: str
    error_code: str
    def __init__(self, request_id: _Optional[str] = ..., node_id: _Optional[str] = ..., text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., error: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., score: _Optional[_Union[ChatScore, _Mapping]] = ..., tool_calls_json: _Optional[str] = ..., error_code: _Optional[str] = ...) -> None: ...

class ChatScore(_message.Message):
    __slots__ = ("greedy_gap", "logprob", "entropy", "variance", "decoded", "eos_token_id", "has_eos")
    GREEDY_GAP_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    VARIANCE_FIELD_NUMBER: _ClassVar[int]
    DECODED_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_EOS_FIELD_NUMBER: _ClassVar[int]
    greedy_gap: _containers.RepeatedScalarFieldContainer[float]
    logprob: _containers.RepeatedScalarFieldContainer[float]
    entropy: _containers.RepeatedScalarFieldContainer[float]
    variance: _containers.RepeatedScalarFieldContainer[float]
    decoded: str
    eos_token_id: int
    has_eos: bool
    def __init__(self, greedy_gap: _Optional[_Iterable[float]] = ..., logprob: _Optional[_Iterable[float]] = ..., entropy: _Optional[_Iterable[float]] = ..., variance: _Optional[_Iterable[float]] = ..., decoded: _Optional[str] = ..., eos_token_id: _Optional[int] = ..., has_eos: _Optional[bool] = ...) -> None: ...

class ChatStreamAck(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

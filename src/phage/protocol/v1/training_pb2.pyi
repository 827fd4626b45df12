from phage.protocol.v1 import phage_pb2 as _phage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingSubscribe(_message.Message):
    __slots__ = ("node_id", "dataplane_address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    dataplane_address: str
    def __init__(self, node_id: _Optional[str] = ..., dataplane_address: _Optional[str] = ...) -> None: ...

class VNodeRoute(_message.Message):
    __slots__ = ("vnode_id", "node_id", "address", "generation", "consumer")
    VNODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    vnode_id: str
    node_id: str
    address: str
    generation: int
    consumer: bool
    def __init__(self, vnode_id: _Optional[str] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ..., generation: _Optional[int] = ..., consumer: _Optional[bool] = ...) -> None: ...

class HostVNode(_message.Message):
    __slots__ = ("network_id", "vnode_id", "spec_json", "dataset_sha256", "checkpoint_sha256", "epochs", "batch_size", "seed", "checkpoint_every", "check_rate", "generation", "replay_from", "routes", "routes_only")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    VNODE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    CHECK_RATE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FROM_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    ROUTES_ONLY_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    vnode_id: str
    spec_json: str
    dataset_sha256: str
    checkpoint_sha256: str
    epochs: int
    batch_size: int
    seed: int
    checkpoint_every: int
    check_rate: float
    generation: int
    replay_from: int
    routes: _containers.RepeatedCompositeFieldContainer[VNodeRoute]
    routes_only: bool
    def __init__(self, network_id: _Optional[str] = ..., vnode_id: _Optional[str] = ..., spec_json: _Optional[str] = ..., dataset_sha256: _Optional[str] = ..., checkpoint_sha256: _Optional[str] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., checkpoint_every: _Optional[int] = ..., check_rate: _Optional[float] = ..., generation: _Optional[int] = ..., replay_from: _Optional[int] = ..., routes: _Optional[_Iterable[_Union[VNodeRoute, _Mapping]]] = ..., routes_only: _Optional[bool] = ...) -> None: ...

class DropVNode(_message.Message):
    __slots__ = ("network_id", "vnode_id")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    VNODE_ID_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    vnode_id: str
    def __init__(self, network_id: _Optional[str] = ..., vnode_id: _Optional[str] = ...) -> None: ...

class CheckStep(_message.Message):
    __slots__ = ("check_id", "network_id", "vnode_id", "spec_json", "before_sha256", "inputs_sha256", "seq")
    CHECK_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    VNODE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    BEFORE_SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    check_id: str
    network_id: str
    vnode_id: str
    spec_json: str
    before_sha256: str
    inputs_sha256: str
    seq: int
    def __init__(self, check_id: _Optional[str] = ..., network_id: _Optional[str] = ..., vnode_id: _Optional[str] = ..., spec_json: _Optional[str] = ..., before_sha256: _Optional[str] = ..., inputs_sha256: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class TrainingOrder(_message.Message):
    __slots__ = ("host", "drop", "check")
    HOST_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    host: HostVNode
    drop: DropVNode
    check: CheckStep
    def __init__(self, host: _Optional[_Union[HostVNode, _Mapping]] = ..., drop: _Optional[_Union[DropVNode, _Mapping]] = ..., check: _Optional[_Union[CheckStep, _Mapping]] = ...) -> None: ...

class ActivationFrame(_message.Message):
    __slots__ = ("network_id", "vnode_id", "seq", "tensor", "end", "generation")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    VNODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    vnode_id: str
    seq: int
    tensor: bytes
    end: bool
    generation: int
    def __init__(self, network_id: _Optional[str] = ..., vnode_id: _Optional[str] = ..., seq: _Optional[int] = ..., tensor: _Optional[bytes] = ..., end: _Optional[bool] = ..., generation: _Optional[int] = ...) -> None: ...

class VNodeReport(_message.Message):
    __slots__ = ("node_id", "network_id", "vnode_id", "step", "last_batch", "loss", "samples_per_s", "checkpoint_sha256", "done", "error", "generation", "check_seq", "check_before_sha256", "check_inputs_sha256", "check_after_digest", "check_id", "check_result_digest", "samples", "frames_direct", "frames_relayed", "frames_local")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    VNODE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_BATCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CHECK_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECK_BEFORE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CHECK_INPUTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    CHECK_AFTER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHECK_ID_FIELD_NUMBER: _ClassVar[int]
    CHECK_RESULT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DIRECT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_RELAYED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_LOCAL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    network_id: str
    vnode_id: str
    step: int
    last_batch: int
    loss: float
    samples_per_s: float
    checkpoint_sha256: str
    done: bool
    error: str
    generation: int
    check_seq: int
    check_before_sha256: str
    check_inputs_sha256: str
    check_after_digest: str
    check_id: str
    check_result_digest: str
    samples: int
    frames_direct: int
    frames_relayed: int
    frames_local: int
    def __init__(self, node_id: _Optional[str] = ..., network_id: _Optional[str] = ..., vnode_id: _Optional[str] = ..., step: _Optional[int] = ..., last_batch: _Optional[int] = ..., loss: _Optional[float] = ..., samples_per_s: _Optional[float] = ..., checkpoint_sha256: _Optional[str] = ..., done: _Optional[bool] = ..., error: _Optional[str] = ..., generation: _Optional[int] = ..., check_seq: _Optional[int] = ..., check_before_sha256: _Optional[str] = ..., check_inputs_sha256: _Optional[str] = ..., check_after_digest: _Optional[str] = ..., check_id: _Optional[str] = ..., check_result_digest: _Optional[str] = ..., samples: _Optional[int] = ..., frames_direct: _Optional[int] = ..., frames_relayed: _Optional[int] = ..., frames_local: _Optional[int] = ...) -> None: ...

class VNodeReportAck(_message.Message):
    __slots__ = ("stop",)
    STOP_FIELD_NUMBER: _ClassVar[int]
    stop: bool
    def __init__(self, stop: _Optional[bool] = ...) -> None: ...

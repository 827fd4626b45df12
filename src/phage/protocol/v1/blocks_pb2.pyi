from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class BlockOffer(_message.Message):
    __slots__ = ("serve_blocks", "dataplane_address", "memory_bytes", "model", "start", "end", "throughput", "requested_model", "active_sessions")
    SERVE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    serve_blocks: str
    dataplane_address: str
    memory_bytes: int
    model: str
    start: int
    end: int
    throughput: float
    requested_model: str
    active_sessions: int
    def __init__(self, serve_blocks: _Optional[str] = ..., dataplane_address: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., model: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., throughput: _Optional[float] = ..., requested_model: _Optional[str] = ..., active_sessions: _Optional[int] = ...) -> None: ...

class BlockAssignment(_message.Message):
    __slots__ = ("model", "checkpoint", "start", "end", "standby", "error")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    STANDBY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    model: str
    checkpoint: str
    start: int
    end: int
    standby: bool
    error: str
    def __init__(self, model: _Optional[str] = ..., checkpoint: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., standby: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

"""Domain types: tasks, attempts, nodes and their states. Plain data, no I/O."""

from phage.domain.manifest import JobManifest
from phage.domain.models import (
    Assignment,
    Attempt,
    AttemptState,
    Dispatch,
    Node,
    NodeState,
    OutputFile,
    Task,
    TaskKind,
    TaskResult,
    TaskState,
)

__all__ = [
    "Assignment",
    "Attempt",
    "AttemptState",
    "Dispatch",
    "JobManifest",
    "Node",
    "NodeState",
    "OutputFile",
    "Task",
    "TaskKind",
    "TaskResult",
    "TaskState",
]

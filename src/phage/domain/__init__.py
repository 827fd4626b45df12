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
    ReceivedAssignment,
    Task,
    TaskKind,
    TaskResult,
    TaskState,
)
from phage.domain.spec import QuorumSpec, TaskSpec

__all__ = [
    "Assignment",
    "Attempt",
    "AttemptState",
    "Dispatch",
    "JobManifest",
    "Node",
    "NodeState",
    "OutputFile",
    "QuorumSpec",
    "ReceivedAssignment",
    "Task",
    "TaskKind",
    "TaskResult",
    "TaskSpec",
    "TaskState",
]

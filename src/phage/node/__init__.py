"""The node daemon: joins a coordinator, pulls work, runs it sandboxed, reports results.

``NodeAgent`` is imported on first use so that reading a node's configuration (``phage --help``,
``phage config``) needs neither gRPC nor the sandboxes: a client-only install has neither.
"""

from typing import TYPE_CHECKING, Any

from phage.node.config import NodeConfig

if TYPE_CHECKING:
    from phage.node.agent import NodeAgent

__all__ = ["NodeAgent", "NodeConfig"]


def __getattr__(name: str) -> Any:
    if name == "NodeAgent":
        from phage.node.agent import NodeAgent

        return NodeAgent
    raise AttributeError(f"module 'phage.node' has no attribute {name!r}")

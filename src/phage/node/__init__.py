"""The node daemon: joins a coordinator, pulls work, runs it sandboxed, reports results."""

from phage.node.agent import NodeAgent
from phage.node.config import NodeConfig

__all__ = ["NodeAgent", "NodeConfig"]

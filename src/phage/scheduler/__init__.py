"""Placement: which queued work a node gets, as pure functions over a snapshot."""

from phage.scheduler.policy import NodeView, eligible, order_key
from phage.scheduler.queue import ReadyQueue

__all__ = ["NodeView", "ReadyQueue", "eligible", "order_key"]

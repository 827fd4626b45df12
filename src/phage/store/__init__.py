"""Durable state: the repository interface, its SQLAlchemy implementation, migrations."""

from phage.store.base import ApiKeyRecord, FinishOutcome, LostOutcome, PageCursor, QueuedTask, Store
from phage.store.sql import SqlStore, sqlite_url

__all__ = [
    "ApiKeyRecord",
    "FinishOutcome",
    "LostOutcome",
    "PageCursor",
    "QueuedTask",
    "SqlStore",
    "Store",
    "sqlite_url",
]

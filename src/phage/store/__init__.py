"""Durable state: the SQLAlchemy store, the values it returns, migrations."""

from phage.domain.models import QueuedTask
from phage.store.base import ApiKeyRecord, FinishOutcome, LostOutcome, PageCursor
from phage.store.sql import SqlStore, sqlite_url

__all__ = [
    "ApiKeyRecord",
    "FinishOutcome",
    "LostOutcome",
    "PageCursor",
    "QueuedTask",
    "SqlStore",
    "sqlite_url",
]

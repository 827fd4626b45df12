"""phage: one dependable service for AI work on machines contributed by many owners.

The public front for scripts is small::

    from phage import Client
    with Client("http://127.0.0.1:8080", key) as pool:
        task = pool.wait(pool.submit({"kind": "job", ...}).id)

``AsyncClient`` is the same over asyncio; answers are the frozen models below; every error phage
raises on purpose is a :class:`PhageError`. Everything else is internal.

The names are loaded on first use (``__init__.pyi`` declares them for type checkers), so that
importing any part of phage — a node, the coordinator — never imports the client.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "ApiKey",
    "AsyncClient",
    "Client",
    "KeyUsage",
    "NewApiKey",
    "Node",
    "PhageClientError",
    "PhageError",
    "PoolStatus",
    "Task",
    "TaskPage",
    "TaskRef",
    "__version__",
]

_WHERE = {
    "AsyncClient": ("phage.client", "PhageClient"),
    "Client": ("phage.client", "Client"),
    "PhageClientError": ("phage.client", "PhageClientError"),
    "PhageError": ("phage.errors", "PhageError"),
}


def __getattr__(name: str) -> Any:
    # Lazy, so that `import phage.<anything>` (a node, the coordinator) does not import the client.
    import importlib

    if name in _WHERE:
        module, attr = _WHERE[name]
        return getattr(importlib.import_module(module), attr)
    if name in __all__:
        return getattr(importlib.import_module("phage.api.models"), name)
    raise AttributeError(f"module 'phage' has no attribute {name!r}")

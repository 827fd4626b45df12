"""Talking to a coordinator: the Python SDK (async and blocking) and the ``phage`` command line."""

from phage.client._calls import PhageClientError
from phage.client.sdk import PhageClient
from phage.client.sync import Client

__all__ = ["Client", "PhageClient", "PhageClientError"]

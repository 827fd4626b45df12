"""Talking to a coordinator: the Python SDK and the ``phage`` command line."""

from phage.client.sdk import PhageClient, PhageClientError

__all__ = ["PhageClient", "PhageClientError"]

"""Workspaces down from the coordinator and outputs up to it, streamed in chunks and retried.

A workspace too big to travel inside its assignment is downloaded by digest, once: the
node keeps it (``WorkspaceCache``, checked against the digest) for the next task that
names it. An output file is uploaded from disk in chunks, never read whole into memory.
Both go over whatever channel the node uses when they run, so a node that moves to
another coordinator replica mid-transfer retries on the new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from phage.node.endpoints import retry_rpc
from phage.node.executor import CollectedOutput
from phage.node.workspaces import WorkspaceCache
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc

UPLOAD_CHUNK = 256 * 1024
DOWNLOAD_TRIES = 10
"""A workspace download that keeps failing is given up (the task is reported and retried elsewhere)."""


class BlobTransfers:
    """Streams blobs to and from the coordinator the node is connected to now."""

    def __init__(self, stub: Callable[[], pb_grpc.PhageCoordinatorStub], workspaces: WorkspaceCache) -> None:
        self.stub = stub
        self.workspaces = workspaces

    async def download(self, digest: str) -> bytes:
        """A streamed workspace: from the node's cache, else from the coordinator (then kept)."""
        cached = await asyncio.to_thread(self.workspaces.get, digest)
        if cached is not None:
            return cached

        async def fetch() -> bytes:
            call = self.stub().DownloadBlob(pb.BlobRequest(sha256=digest), timeout=600)
            return b"".join([chunk.data async for chunk in call])

        data: bytes = await retry_rpc(fetch, attempts=DOWNLOAD_TRIES)
        await asyncio.to_thread(self.workspaces.put, digest, data)  # checks it against the digest
        return data

    async def upload(self, out: CollectedOutput) -> None:
        """Send one output file, retried until the coordinator has it."""

        async def send() -> pb.BlobRef:
            # opened here, not in the stream: an error raised inside a request stream stalls the call
            fh = out.local.open("rb")

            def chunks() -> Any:
                first = True
                while True:
                    data = fh.read(UPLOAD_CHUNK)
                    if first:
                        yield pb.BlobChunk(sha256=out.sha256, total_size=out.size, data=data)
                        first = False
                    elif data:
                        yield pb.BlobChunk(data=data)
                    if not data:
                        return

            with fh:
                ref: pb.BlobRef = await self.stub().UploadBlob(chunks(), timeout=600)
            return ref

        await retry_rpc(send)

"""The SDK's edges that a live coordinator never shows on purpose: a corrupted download, error shapes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from phage import Client, PhageClientError


def _serving(body: bytes, digest: str) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/tasks/t-1/outputs/"):
            return httpx.Response(200, content=body, headers={"X-Content-SHA256": digest})
        if request.url.path == "/v1/models":
            return httpx.Response(400, json={"error": {"message": "bad model", "param": "model"}})
        return httpx.Response(409, json={"error": "Conflict", "message": "task is final", "field": "id"})

    return httpx.MockTransport(handle)


def test_download_that_does_not_match_its_digest_leaves_nothing(tmp_path: Path) -> None:
    body = b"x" * 100_000
    with Client("http://pool", "k", transport=_serving(body, "0" * 64)) as c:
        with pytest.raises(PhageClientError, match="does not match its SHA-256") as err:
            c.download("t-1", "out/a.bin", tmp_path / "a.bin")
        assert err.value.status == 502
    assert list(tmp_path.iterdir()) == []  # neither the file nor its partial download


def test_download_that_matches_is_moved_into_place(tmp_path: Path) -> None:
    body = b"y" * 200_000
    with Client("http://pool", "k", transport=_serving(body, hashlib.sha256(body).hexdigest())) as c:
        got = c.download("t-1", "out/a.bin", tmp_path / "sub" / "a.bin")
    assert got.read_bytes() == body and [p.name for p in got.parent.iterdir()] == ["a.bin"]


def test_error_bodies_of_both_shapes_become_client_errors() -> None:
    with Client("http://pool", "k", transport=_serving(b"", "")) as c:
        with pytest.raises(PhageClientError) as phage_shape:
            c.cancel("t-9")
        assert (phage_shape.value.status, phage_shape.value.field) == (409, "id")
        with pytest.raises(PhageClientError) as openai_shape:
            c.models()
        assert openai_shape.value.message == "bad model" and openai_shape.value.field == "model"
        with pytest.raises(ValueError, match="submit_many"):
            c.submit({"kind": "noop", "count": 3})

"""Bad input gets a clear 4xx naming the problem, and harms nothing.

Every case runs against one real coordinator process with small limits; at the
end no task exists that a bad request created and the blob store holds only
what the good requests put there.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from phage.testing import CoordinatorProcess

pytestmark = pytest.mark.backend_neutral  # bad requests are refused at the HTTP edge, before the store

WORKSPACE_LIMIT = 64 * 1024
REQUEST_LIMIT = 32 * 1024
MANIFEST = {"entrypoint": "main.py", "outputs": ["out.txt"]}


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    env = {"PHAGE_MAX_WORKSPACE_BYTES": str(WORKSPACE_LIMIT), "PHAGE_MAX_REQUEST_BYTES": str(REQUEST_LIMIT)}
    c = CoordinatorProcess(
        tmp_path_factory.mktemp("bad-input") / "coordinator", heartbeat_s=5.0, env=env
    ).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def client(coord: CoordinatorProcess) -> Iterator[httpx.Client]:
    with coord.client() as c:
        yield c


def _tar(build: Any) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        build(tar)
    return buf.getvalue()


def _file(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _special(name: str, kind: bytes, linkname: str = "") -> Any:
    def build(tar: tarfile.TarFile) -> None:
        _file(tar, "main.py", b"print(1)")
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tar.addfile(info)

    return build


def _upload(client: httpx.Client, archive: bytes, task: dict[str, Any] | None = None) -> httpx.Response:
    spec = json.dumps(task or {"kind": "job", "manifest": MANIFEST})
    return client.post("/api/tasks", data={"task": spec}, files={"workspace": ("w.tar.gz", archive)})


def _problem(resp: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body: dict[str, Any] = resp.json()
    text = f"{body.get('field', '')} {body.get('message', '')}"
    for word in words:
        assert word in text, (word, body)
    return body


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", ("body", "not valid JSON")),
        (b"[1, 2, 3]", ("task", "JSON object")),
        (b'"a string"', ("task", "JSON object")),
        (json.dumps({"kind": "job"}).encode(), ("manifest", "required")),
        (json.dumps({"kind": "job", "manifest": {}}).encode(), ("manifest.entrypoint", "required")),
        (
            json.dumps({"kind": "job", "manifest": {"entrypoint": 3}}).encode(),
            ("manifest.entrypoint", "string"),
        ),
        (
            json.dumps({"kind": "job", "manifest": MANIFEST, "priority": "high"}).encode(),
            ("priority", "integer"),
        ),
        (
            json.dumps({"kind": "job", "manifest": MANIFEST, "priority": 10**6}).encode(),
            ("priority", "between"),
        ),
        (
            json.dumps({"kind": "job", "manifest": {**MANIFEST, "args": "x"}}).encode(),
            ("manifest.args", "list"),
        ),
        (
            json.dumps({"kind": "job", "manifest": {**MANIFEST, "timeout_s": -1}}).encode(),
            ("timeout_s", "between"),
        ),
        (
            json.dumps({"kind": "job", "manifest": {**MANIFEST, "timeout_s": 10**9}}).encode(),
            ("timeout_s", "between"),
        ),
        (
            json.dumps({"kind": "job", "manifest": {**MANIFEST, "env": {"1BAD": "x"}}}).encode(),
            ("manifest.env",),
        ),
        (
            json.dumps({"kind": "job", "manifest": {**MANIFEST, "outputs": ["../up"]}}).encode(),
            ("outputs", ".."),
        ),
        (
            json.dumps({"kind": "job", "manifest": {**MANIFEST, "entrypoint": "/etc/passwd"}}).encode(),
            ("entrypoint", "relative"),
        ),
        (json.dumps({"kind": "job", "manifest": MANIFEST, "colour": "red"}).encode(), ("colour", "unknown")),
        (json.dumps({"kind": "mine-bitcoin"}).encode(), ("kind", "unknown task kind")),
        (json.dumps({"kind": "job", "manifest": MANIFEST, "files": {"../evil.py": "x"}}).encode(), ("..",)),
        (
            json.dumps({"kind": "job", "manifest": MANIFEST, "files": {"/abs.py": "x"}}).encode(),
            ("relative",),
        ),
        (json.dumps({"tasks": []}).encode(), ("tasks", "non-empty")),
        (
            json.dumps({"tasks": [{"kind": "noop"}, {"kind": "nope"}]}).encode(),
            ("tasks[1]", "unknown task kind"),
        ),
        (
            json.dumps(
                {"kind": "generate", "prompt": "x", "model": "m", "verifier": "true", "n": 0}
            ).encode(),
            ("n", "between"),
        ),
    ],
)
def test_malformed_json_requests_name_the_problem(
    client: httpx.Client, body: bytes, words: tuple[str, ...]
) -> None:
    resp = client.post("/api/tasks", content=body, headers={"Content-Type": "application/json"})
    _problem(resp, 400, *words)


def test_json_body_over_the_request_limit(client: httpx.Client) -> None:
    big = {"kind": "job", "manifest": MANIFEST, "files": {"main.py": "x" * (REQUEST_LIMIT + 10)}}
    _problem(client.post("/api/tasks", json=big), 413, "body", str(REQUEST_LIMIT))


def test_workspace_over_the_size_limit(client: httpx.Client) -> None:
    import os

    blob = os.urandom(WORKSPACE_LIMIT + 1024)  # incompressible, so the archive itself is over the limit
    archive = _tar(lambda tar: _file(tar, "big.bin", blob))
    _problem(_upload(client, archive), 413, "workspace", str(WORKSPACE_LIMIT))


def test_workspace_that_unpacks_over_the_limit(client: httpx.Client) -> None:
    archive = _tar(lambda tar: _file(tar, "zeros.bin", b"\0" * (WORKSPACE_LIMIT * 4)))
    assert len(archive) < WORKSPACE_LIMIT  # small archive, big contents: a zip bomb in miniature
    _problem(_upload(client, archive), 413, "workspace", "unpacks")


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda tar: _file(tar, "../escape.py"), ("..",)),
        (lambda tar: _file(tar, "a/../../escape.py"), ("..",)),
        (lambda tar: _file(tar, "/etc/cron.d/evil"), ("absolute",)),
        (_special("link", tarfile.SYMTYPE, "/etc/passwd"), ("link",)),
        (_special("hard", tarfile.LNKTYPE, "main.py"), ("link",)),
        (_special("dev", tarfile.CHRTYPE), ("device or special",)),
        (_special("blk", tarfile.BLKTYPE), ("device or special",)),
        (_special("fifo", tarfile.FIFOTYPE), ("device or special",)),
    ],
)
def test_dangerous_tarballs_are_refused(client: httpx.Client, build: Any, words: tuple[str, ...]) -> None:
    _problem(_upload(client, _tar(build)), 400, "workspace", *words)


def test_an_upload_that_is_not_a_tarball(client: httpx.Client) -> None:
    _problem(_upload(client, b"PK\x03\x04 this is a zip, not a tar"), 400, "workspace", "tar")


def test_multipart_without_task_or_manifest(client: httpx.Client) -> None:
    resp = client.post("/api/tasks", files={"workspace": ("w.tar.gz", _tar(lambda t: _file(t, "a")))})
    _problem(resp, 400, "manifest")


def test_output_paths_that_escape_on_download(coord: CoordinatorProcess, client: httpx.Client) -> None:
    task = client.post("/api/tasks", json={"kind": "noop"}).json()
    for path in (
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e/%2e%2e/etc/passwd",
        "/etc/passwd",
        "a/../../../etc/passwd",
    ):
        resp = client.get(f"/api/tasks/{task['id']}/outputs/{path}")
        assert resp.status_code in (400, 404), (path, resp.status_code)
        assert "root:" not in resp.text
    raw = httpx.get(
        f"{coord.url}/api/tasks/{task['id']}/outputs/..%2f..%2f..%2fetc%2fpasswd",
        headers={"Authorization": f"Bearer {coord.admin_key}"},
    )
    assert raw.status_code in (400, 404) and "root:" not in raw.text


def test_unknown_task_id(client: httpx.Client) -> None:
    _problem(client.get("/api/tasks/t-does-not-exist"), 404, "id", "no task")
    _problem(client.delete("/api/tasks/t-does-not-exist"), 404, "id")
    _problem(client.get("/api/tasks/t-does-not-exist/outputs/out.txt"), 404)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer phk_wrong"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
    ],
)
def test_missing_or_wrong_api_key(coord: CoordinatorProcess, headers: dict[str, str]) -> None:
    for method, path in (
        ("GET", "/api/tasks"),
        ("POST", "/api/tasks"),
        ("GET", "/api/nodes"),
        ("GET", "/api/status"),
    ):
        resp = httpx.request(method, f"{coord.url}{path}", headers=headers, json={"kind": "noop"})
        assert resp.status_code == 401, (method, path, resp.text)
        assert resp.json()["field"] == "Authorization"
        assert resp.headers.get("www-authenticate") == "Bearer"


def test_feed_refuses_a_wrong_key(coord: CoordinatorProcess) -> None:
    import asyncio

    import websockets.exceptions

    async def main() -> None:
        url = coord.url.replace("http://", "ws://") + "/api/feed?key=phk_wrong"
        with pytest.raises(websockets.exceptions.WebSocketException):
            async with websockets.connect(url) as ws:
                await ws.recv()

    asyncio.run(main())


def test_bad_requests_wrote_nothing(coord: CoordinatorProcess, client: httpx.Client) -> None:
    """Runs last in this module: only the good requests left traces."""
    good = client.post(
        "/api/tasks", json={"kind": "job", "manifest": MANIFEST, "files": {"main.py": "print(1)"}}
    )
    assert good.status_code == 201
    tasks = client.get("/api/tasks", params={"limit": 1000}).json()["tasks"]
    jobs = [t for t in tasks if t["kind"] == "job"]
    assert [t["id"] for t in jobs] == [good.json()["id"]], "no bad request created a job"
    assert all(t["kind"] in ("job", "noop") for t in tasks)
    root = Path(coord.data_dir) / "blobs"
    blobs = [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "tmp"]
    assert [p.name for p in blobs] == [good.json()["workspace_sha256"]]
    assert not any((Path(coord.data_dir) / "blobs" / "tmp").iterdir()), "no partial uploads left behind"

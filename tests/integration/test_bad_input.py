"""Bad input at the HTTP edge: a real coordinator process, real HTTP, no mocks.

Every bad request must get a clear 4xx whose JSON body names the field or the
limit at fault, and must leave nothing behind: no task, no stored blob. A
valid submission afterwards still works.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from phage.testing import CoordinatorProcess

pytestmark = pytest.mark.backend_neutral  # bad requests are refused at the HTTP edge, before the store

MAX_WORKSPACE = 64 * 1024
MAX_REQUEST = 16 * 1024
TIMEOUT_LIMIT = 7 * 24 * 3600


@dataclass
class Server:
    """The coordinator under test and what valid submissions are allowed to have left behind."""

    coord: CoordinatorProcess
    made_tasks: set[str] = field(default_factory=set)
    made_blobs: set[str] = field(default_factory=set)

    @property
    def blobs(self) -> Path:
        return self.coord.data_dir / "blobs"

    def request(self, method: str, url: str, *, key: str | None = None, **kwargs: Any) -> httpx.Response:
        """One request on a fresh connection (a server error may close a kept-alive one)."""
        with self.coord.client(key) as client:
            return client.request(method, url, **kwargs)

    def anonymous(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A request with whatever headers are given and no API key of ours."""
        with httpx.Client(base_url=self.coord.url, timeout=30) as client:
            return client.request(method, url, **kwargs)

    def raw_get(self, path: str) -> tuple[int, bytes]:
        """GET a path exactly as written: httpx would normalise away ``..`` segments."""
        conn = http.client.HTTPConnection("127.0.0.1", self.coord.http_port, timeout=30)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.coord.admin_key}"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One coordinator with small workspace and request limits."""
    coord = CoordinatorProcess(
        tmp_path_factory.mktemp("bad-input") / "coordinator",
        env={
            "PHAGE_MAX_WORKSPACE_BYTES": str(MAX_WORKSPACE),
            "PHAGE_MAX_REQUEST_BYTES": str(MAX_REQUEST),
        },
    ).start()
    try:
        yield Server(coord)
    finally:
        coord.stop()


# ---- building inputs ---------------------------------------------------------


def manifest(**extra: Any) -> dict[str, Any]:
    return {"entrypoint": "main.py", "interpreter": "python3", "timeout_s": 30, **extra}


def job(**extra: Any) -> dict[str, Any]:
    return {"kind": "job", "files": {"main.py": "print('hi')\n"}, "manifest": manifest(), **extra}


def member(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info


def tar_gz(*entries: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> bytes:
    """A .tar.gz with a harmless main.py first, so the validator must look past it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        ok = b"print('hi')\n"
        tar.addfile(member("main.py", ok), io.BytesIO(ok))
        for entry in entries:
            info, data = entry if isinstance(entry, tuple) else (entry, b"")
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def crc_broken_tar_gz() -> bytes:
    """A gzip whose CRC is wrong; the tar inside has no end blocks, so reading hits the trailer."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = b"print('hi')\n"
        tar.addfile(member("main.py", data), io.BytesIO(data))
    packed = bytearray(gzip.compress(raw.getvalue()[:1024], mtime=0))
    packed[-8] ^= 0xFF
    return bytes(packed)


def upload(server: Server, archive: bytes, task: dict[str, Any] | None = None) -> httpx.Response:
    return server.request(
        "POST",
        "/api/tasks",
        data={"task": json.dumps(task or {"kind": "job", "manifest": manifest()})},
        files={"workspace": ("workspace.tar.gz", archive, "application/gzip")},
    )


def post_json(body: Any) -> Callable[[Server], httpx.Response]:
    return lambda s: s.request("POST", "/api/tasks", json=body)


def post_raw(content: bytes) -> Callable[[Server], httpx.Response]:
    return lambda s: s.request(
        "POST", "/api/tasks", content=content, headers={"content-type": "application/json"}
    )


def post_upload(archive: bytes, task: dict[str, Any] | None = None) -> Callable[[Server], httpx.Response]:
    return lambda s: upload(s, archive, task)


def post_chunked(total: int) -> Callable[[Server], httpx.Response]:
    """A body with no Content-Length (chunked), so the limit must be enforced while reading."""

    def chunks() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            piece = b" " * min(4096, total - sent)
            sent += len(piece)
            yield piece

    return lambda s: s.request(
        "POST", "/api/tasks", content=chunks(), headers={"content-type": "application/json"}
    )


def post_multipart(
    data: dict[str, str], files: dict[str, tuple[str, bytes]]
) -> Callable[[Server], httpx.Response]:
    return lambda s: s.request("POST", "/api/tasks", data=data, files=files)


# ---- the cases ----------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A bad request, the status it must get, the field it must name and words its message must hold."""

    name: str
    send: Callable[[Server], httpx.Response]
    status: int
    field: str | None
    mentions: tuple[str, ...] = ()


BAD_SUBMISSIONS = [
    # the body itself
    Bad("malformed-json", post_raw(b'{"kind": "job",'), 400, "body", ("not valid JSON",)),
    Bad("empty-body", post_raw(b""), 400, "body", ("not valid JSON",)),
    Bad("not-utf8", post_raw(b'{"kind": "\xff\xfe"}'), 400, "body", ("not valid JSON",)),
    Bad("json-array", post_json([1, 2, 3]), 400, "task", ("JSON object",)),
    Bad("json-string", post_json("run my job"), 400, "task", ("JSON object",)),
    Bad("json-null", post_raw(b"null"), 400, "task", ("JSON object",)),
    Bad("json-number", post_json(42), 400, "task", ("JSON object",)),
    Bad("empty-batch", post_json({"tasks": []}), 400, "tasks", ("non-empty list",)),
    Bad("batch-not-list", post_json({"tasks": "abc"}), 400, "tasks", ("non-empty list",)),
    Bad(
        "batch-second-item-bad",
        post_json({"tasks": [job(), {"kind": "job", "manifest": {"args": []}}]}),
        400,
        "tasks[1].manifest.entrypoint",
        ("tasks[1]", "entrypoint"),
    ),
    Bad(
        "deeply-nested-json",
        post_raw(b"[" * 5000 + b"]" * 5000),
        400,
        "body",
        (),
    ),
    # the task's own fields
    Bad("missing-manifest", post_json({"kind": "job"}), 400, "manifest", ("manifest is required",)),
    Bad("manifest-not-object", post_json({"manifest": "main.py"}), 400, "manifest", ("JSON object",)),
    Bad(
        "missing-entrypoint",
        post_json({"manifest": {"interpreter": "python3"}}),
        400,
        "manifest.entrypoint",
        ("entrypoint is required",),
    ),
    Bad(
        "entrypoint-escapes",
        post_json({"manifest": manifest(entrypoint="../../bin/sh")}),
        400,
        "manifest.entrypoint",
        ("'..'",),
    ),
    Bad(
        "entrypoint-absolute",
        post_json({"manifest": manifest(entrypoint="/bin/sh")}),
        400,
        "manifest.entrypoint",
        ("relative",),
    ),
    Bad("priority-string", post_json(job(priority="high")), 400, "priority", ("integer",)),
    Bad("priority-bool", post_json(job(priority=True)), 400, "priority", ("integer",)),
    Bad("priority-float", post_json(job(priority=1.5)), 400, "priority", ("integer",)),
    Bad("priority-too-high", post_json(job(priority=10**6)), 400, "priority", ("-1000", "1000")),
    Bad("max-attempts-zero", post_json(job(max_attempts=0)), 400, "max_attempts", ("between 1 and 100",)),
    Bad("count-zero", post_json(job(count=0)), 400, "count", ("between 1",)),
    Bad("min-quorum-zero", post_json(job(min_quorum=0)), 400, "min_quorum", ("between 1 and 16",)),
    Bad(
        "min-quorum-over-attempts",
        post_json(job(min_quorum=4, max_attempts=3)),
        400,
        "min_quorum",
        ("min_quorum (4)", "max_attempts (3)"),
    ),
    Bad(
        "target-results-over-attempts",
        post_json(job(target_results=5, max_attempts=3)),
        400,
        "target_results",
        ("target_results (5)", "max_attempts (3)"),
    ),
    Bad("quorum-on-noop", post_json({"kind": "noop", "min_quorum": 2}), 400, "min_quorum", ("jobs only",)),
    Bad(
        "args-not-list",
        post_json({"manifest": manifest(args="--fast --loud")}),
        400,
        "manifest.args",
        ("list of strings",),
    ),
    Bad(
        "args-not-strings",
        post_json({"manifest": manifest(args=["--n", 3])}),
        400,
        "manifest.args",
        ("list of strings",),
    ),
    Bad(
        "timeout-too-large",
        post_json({"manifest": manifest(timeout_s=10**9)}),
        400,
        "manifest.timeout_s",
        (str(TIMEOUT_LIMIT),),
    ),
    Bad(
        "timeout-negative",
        post_json({"manifest": manifest(timeout_s=-5)}),
        400,
        "manifest.timeout_s",
        ("between 1 and",),
    ),
    Bad(
        "timeout-string",
        post_json({"manifest": manifest(timeout_s="60")}),
        400,
        "manifest.timeout_s",
        ("number of seconds",),
    ),
    Bad(
        "env-name-starts-with-digit",
        post_json({"manifest": manifest(env={"1BAD": "x"})}),
        400,
        "manifest.env",
        ("1BAD",),
    ),
    Bad(
        "env-name-with-equals",
        post_json({"manifest": manifest(env={"LD_PRELOAD=/evil.so A": "x"})}),
        400,
        "manifest.env",
        ("LD_PRELOAD",),
    ),
    Bad(
        "env-value-not-string",
        post_json({"manifest": manifest(env={"N": 3})}),
        400,
        "manifest.env",
        ("N",),
    ),
    Bad("env-not-object", post_json({"manifest": manifest(env=["A=1"])}), 400, "manifest.env", ()),
    Bad(
        "output-glob-escapes",
        post_json({"manifest": manifest(outputs=["../../*"])}),
        400,
        "manifest.outputs",
        ("'..'",),
    ),
    Bad("unknown-field", post_json(job(bogus=1)), 400, "bogus", ("unknown fields", "bogus")),
    Bad(
        "unknown-manifest-field",
        post_json({"manifest": manifest(sudo=True)}),
        400,
        "manifest",
        ("unknown fields", "sudo"),
    ),
    Bad(
        "unknown-kind",
        post_json({"kind": "mine-bitcoin"}),
        400,
        "kind",
        ("mine-bitcoin", "job", "generate"),
    ),
    Bad("kind-not-string", post_json({"kind": 7}), 400, "kind", ("string",)),
    Bad("noop-with-manifest", post_json({"kind": "noop", "manifest": manifest()}), 400, "kind", ("noop",)),
    Bad("isolation-unknown", post_json(job(isolation="chroot")), 400, "isolation", ("bwrap",)),
    Bad("labels-not-strings", post_json(job(labels={"a": 1})), 400, "labels", ()),
    Bad(
        "files-not-strings",
        post_json({"manifest": manifest(), "files": {"main.py": 12}}),
        400,
        "files",
        ("file name",),
    ),
    Bad(
        "inline-file-escapes",
        post_json({"manifest": manifest(), "files": {"../main.py": "x"}}),
        400,
        "files['../main.py']",
        ("'..'",),
    ),
    Bad(
        "json-body-over-limit",
        post_raw(json.dumps(job(files={"main.py": "#" * MAX_REQUEST})).encode()),
        413,
        "body",
        (str(MAX_REQUEST),),
    ),
    Bad("chunked-body-over-limit", post_chunked(MAX_REQUEST * 3), 413, "body", (str(MAX_REQUEST),)),
    # multipart: the workspace archive
    Bad(
        "workspace-over-limit",
        post_upload(os.urandom(MAX_WORKSPACE + 6 * 1024)),
        413,
        "workspace",
        (str(MAX_WORKSPACE),),
    ),
    Bad(
        "workspace-far-over-limit",
        post_upload(os.urandom(MAX_WORKSPACE * 3)),
        413,
        "workspace",
        (str(MAX_WORKSPACE),),
    ),
    Bad(
        "workspace-unpacks-over-limit",
        post_upload(tar_gz((member("zeros.bin", bytes(MAX_WORKSPACE * 4)), bytes(MAX_WORKSPACE * 4)))),
        413,
        "workspace",
        (str(MAX_WORKSPACE),),
    ),
    Bad(
        "tar-dotdot",
        post_upload(tar_gz((member("../evil.py", b"x"), b"x"))),
        400,
        "workspace",
        ("../evil.py", "'..'"),
    ),
    Bad(
        "tar-nested-dotdot",
        post_upload(tar_gz((member("lib/../../evil.py", b"x"), b"x"))),
        400,
        "workspace",
        ("'..'",),
    ),
    Bad(
        "tar-absolute",
        post_upload(tar_gz((member("/etc/cron.d/evil", b"x"), b"x"))),
        400,
        "workspace",
        ("/etc/cron.d/evil", "absolute"),
    ),
    Bad(
        "tar-symlink",
        post_upload(tar_gz(member("passwd", kind=tarfile.SYMTYPE, linkname="/etc/passwd"))),
        400,
        "workspace",
        ("passwd", "link"),
    ),
    Bad(
        "tar-hardlink",
        post_upload(tar_gz(member("passwd", kind=tarfile.LNKTYPE, linkname="/etc/passwd"))),
        400,
        "workspace",
        ("passwd", "link"),
    ),
    Bad(
        "tar-char-device",
        post_upload(tar_gz(member("null", kind=tarfile.CHRTYPE))),
        400,
        "workspace",
        ("null", "device"),
    ),
    Bad(
        "tar-block-device",
        post_upload(tar_gz(member("sda", kind=tarfile.BLKTYPE))),
        400,
        "workspace",
        ("sda", "device"),
    ),
    Bad(
        "tar-fifo",
        post_upload(tar_gz(member("pipe", kind=tarfile.FIFOTYPE))),
        400,
        "workspace",
        ("pipe", "special"),
    ),
    Bad("not-a-tar-random", post_upload(os.urandom(4096)), 400, "workspace", ("not a valid tar",)),
    Bad("not-a-tar-text", post_upload(b"print('hi')\n" * 50), 400, "workspace", ("not a valid tar",)),
    Bad(
        "not-a-tar-gzipped-text",
        post_upload(gzip.compress(b"just some text\n" * 100)),
        400,
        "workspace",
        ("not a valid tar",),
    ),
    Bad(
        "tar-truncated",
        post_upload(tar_gz((member("big.bin", os.urandom(20000)), os.urandom(20000)))[:6000]),
        400,
        "workspace",
        ("truncated",),
    ),
    Bad("tar-gz-bad-crc", post_upload(crc_broken_tar_gz()), 400, "workspace", ()),
    # multipart: the other fields
    Bad(
        "multipart-task-not-json",
        post_multipart({"task": "{kind: job"}, {"workspace": ("w.tar.gz", tar_gz())}),
        400,
        "task",
        ("not valid JSON",),
    ),
    Bad(
        "multipart-without-task",
        post_multipart({"note": "hello"}, {"workspace": ("w.tar.gz", tar_gz())}),
        400,
        "manifest",
        ("'task'",),
    ),
    Bad(
        "multipart-bad-seed002-manifest",
        post_multipart({"manifest": json.dumps({"args": []})}, {"workspace": ("w.tar.gz", tar_gz())}),
        400,
        "manifest.entrypoint",
        (),
    ),
    Bad(
        "multipart-workspace-not-a-file",
        post_multipart(
            {"task": json.dumps({"manifest": manifest()}), "workspace": "main.py"},
            {"unrelated": ("u.txt", b"u")},
        ),
        400,
        "workspace",
        ("file upload",),
    ),
    Bad(
        "multipart-files-and-workspace",
        post_upload(tar_gz(), {"manifest": manifest(), "files": {"main.py": "print(1)"}}),
        400,
        "files",
        ("not both",),
    ),
    Bad(
        "multipart-task-over-limit",
        post_multipart(
            {"task": json.dumps(job(files={"main.py": "#" * MAX_REQUEST}))},
            {"workspace": ("w.tar.gz", tar_gz())},
        ),
        413,
        "task",
        (),
    ),
]

AUTH_HEADERS = [
    pytest.param({}, ("missing API key", "Bearer"), id="missing"),
    pytest.param({"Authorization": "Bearer phk_this-key-was-never-issued"}, ("not valid",), id="wrong-key"),
    pytest.param({"Authorization": "Basic YWRtaW46YWRtaW4="}, ("Bearer <key>",), id="basic-scheme"),
    pytest.param({"Authorization": "Bearer"}, ("Bearer <key>",), id="bearer-without-key"),
    pytest.param({"Authorization": "phk_no_scheme_at_all"}, ("Bearer <key>",), id="no-scheme"),
    pytest.param({"Authorization": "Token abc"}, ("Bearer <key>",), id="token-scheme"),
]

AUTH_ROUTES = [
    pytest.param("GET", "/api/tasks", id="list"),
    pytest.param("POST", "/api/tasks", id="submit"),
    pytest.param("GET", "/api/tasks/t-whatever", id="get"),
    pytest.param("DELETE", "/api/tasks/t-whatever", id="cancel"),
    pytest.param("GET", "/api/tasks/t-whatever/outputs/out.txt", id="download"),
    pytest.param("GET", "/api/status", id="status"),
    pytest.param("GET", "/api/nodes", id="nodes"),
]

TRAVERSALS = [
    "../../etc/passwd",
    "../../../../../../etc/passwd",
    "%2e%2e/%2e%2e/etc/passwd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%2f..%2f..%2f..%2fetc%2fpasswd",
    ".%2e/.%2e/etc/passwd",
    "out/../../../etc/passwd",
    "%2fetc%2fpasswd",
    "/etc/passwd",
    "..%5c..%5cetc%5cpasswd",
    "out%00.txt",
    "..",
]


def check_refusal(resp: httpx.Response, status: int, field: str | None, mentions: tuple[str, ...]) -> None:
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:300]}"
    assert resp.headers["content-type"].startswith("application/json"), resp.text[:300]
    body = resp.json()
    assert isinstance(body, dict), body
    assert body.get("error"), body
    message = body.get("message", "")
    assert message, f"no message in {body}"
    if field is not None:
        assert body.get("field") == field, body
    for word in mentions:
        assert word in message, f"{word!r} not in message {message!r}"


@pytest.mark.parametrize("case", BAD_SUBMISSIONS, ids=lambda c: c.name)
def test_bad_submission_is_refused_naming_the_problem(server: Server, case: Bad) -> None:
    """Each bad submission: the right 4xx, a JSON body naming the field, and words for the limit."""
    check_refusal(case.send(server), case.status, case.field, case.mentions)


@pytest.mark.parametrize(("method", "url"), AUTH_ROUTES)
@pytest.mark.parametrize(("headers", "mentions"), AUTH_HEADERS)
def test_bad_credentials_get_401(
    server: Server, method: str, url: str, headers: dict[str, str], mentions: tuple[str, ...]
) -> None:
    """No key, an unknown key or a malformed Authorization header: 401 before anything else happens."""
    body = {"json": job()} if method == "POST" else {}
    resp = server.anonymous(method, url, headers=headers, **body)
    check_refusal(resp, 401, "Authorization", mentions)
    assert resp.headers.get("www-authenticate") == "Bearer"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_unknown_task_id_is_404(server: Server, method: str) -> None:
    """GET and DELETE of a task that never existed name the id."""
    resp = server.request(method, "/api/tasks/t-0000000000000000000000")
    check_refusal(resp, 404, "id", ("t-0000000000000000000000",))


def test_output_of_unknown_task_is_404(server: Server) -> None:
    resp = server.request("GET", "/api/tasks/t-0000000000000000000000/outputs/out/result.txt")
    check_refusal(resp, 404, "id", ("t-0000000000000000000000",))


@pytest.fixture(scope="module")
def real_task(server: Server) -> str:
    """A task that exists (no workspace, so it stores no blob)."""
    resp = server.request("POST", "/api/tasks", json={"kind": "noop"})
    assert resp.status_code == 201, resp.text
    task_id: str = resp.json()["id"]
    server.made_tasks.add(task_id)
    return task_id


@pytest.mark.parametrize("path", TRAVERSALS)
@pytest.mark.parametrize("which", ["unknown-task", "real-task"])
def test_output_path_cannot_escape(server: Server, real_task: str, which: str, path: str) -> None:
    """A download path that climbs out, raw or URL-encoded: 400 or 404, never the file."""
    task_id = real_task if which == "real-task" else "t-0000000000000000000000"
    status, raw = server.raw_get(f"/api/tasks/{task_id}/outputs/{path}")
    assert status in (400, 404), (status, raw[:300])
    assert b"root:" not in raw
    body = json.loads(raw)
    if status == 400:
        assert body["field"] == "path", body
    if which == "real-task" and status == 404:
        # it reached the lookup: the (normalised) path must not be an output of this task
        assert body.get("field") == "path", body


def test_output_path_outside_the_api_is_not_served(server: Server) -> None:
    """Dot segments that climb out of /api/tasks itself reach no file either."""
    for path in (
        "/api/tasks/../../../../etc/passwd",
        "/api/../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
    ):
        status, raw = server.raw_get(path)
        assert status in (400, 404), (path, status, raw[:200])
        assert b"root:" not in raw


def all_bad_requests(server: Server) -> list[int]:
    """Send every bad request once more; returns the statuses (whatever they are)."""
    statuses: list[int] = []
    for case in BAD_SUBMISSIONS:
        statuses.append(case.send(server).status_code)
    for method, url in (("POST", "/api/tasks"), ("DELETE", "/api/tasks/t-0000000000000000000000")):
        statuses.append(server.anonymous(method, url, json=job()).status_code)
        statuses.append(
            server.anonymous(method, url, json=job(), headers={"Authorization": "Bearer nope"}).status_code
        )
    for path in TRAVERSALS:
        statuses.append(server.raw_get(f"/api/tasks/t-0000000000000000000000/outputs/{path}")[0])
    return statuses


def stored_blobs(server: Server) -> dict[str, list[str]]:
    """Files under data_dir/blobs: content-addressed ones, and leftovers in tmp."""
    out: dict[str, list[str]] = {"blobs": [], "tmp": []}
    for p in server.blobs.rglob("*"):
        if p.is_file():
            out["tmp" if p.parent.name == "tmp" else "blobs"].append(p.name)
    return out


def listed_task_ids(server: Server) -> set[str]:
    resp = server.request("GET", "/api/tasks", params={"limit": 1000})
    assert resp.status_code == 200, resp.text
    return {t["id"] for t in resp.json()["tasks"]}


def test_bad_requests_write_nothing(server: Server) -> None:
    """After every bad request: no task they created is listed, and no blob or temp file is left."""
    before_tasks = listed_task_ids(server)
    before_blobs = stored_blobs(server)
    statuses = all_bad_requests(server)
    assert all(s >= 400 for s in statuses), statuses
    after_tasks = listed_task_ids(server)
    assert after_tasks == before_tasks
    assert after_tasks <= server.made_tasks, after_tasks - server.made_tasks
    after_blobs = stored_blobs(server)
    assert after_blobs == before_blobs
    assert set(after_blobs["blobs"]) <= server.made_blobs, after_blobs
    assert after_blobs["tmp"] == []
    counts = server.request("GET", "/api/status").json()["tasks"]
    assert sum(counts.values()) == len(server.made_tasks), counts


def test_valid_submissions_still_work(server: Server) -> None:
    """After all that, a good JSON job and a good multipart upload are accepted and readable."""
    resp = server.request("POST", "/api/tasks", json=job(priority=5, labels={"case": "json"}))
    assert resp.status_code == 201, resp.text
    made = resp.json()
    assert made["state"] == "queued"
    assert made["priority"] == 5
    assert made["manifest"]["entrypoint"] == "main.py"
    server.made_tasks.add(made["id"])
    server.made_blobs.add(made["workspace_sha256"])

    archive = tar_gz((member("data/input.txt", b"42\n"), b"42\n"))
    digest = hashlib.sha256(archive).hexdigest()
    resp = upload(server, archive, {"kind": "job", "manifest": manifest(args=["data/input.txt"])})
    assert resp.status_code == 201, resp.text
    uploaded = resp.json()
    assert uploaded["workspace_sha256"] == digest
    server.made_tasks.add(uploaded["id"])
    server.made_blobs.add(digest)
    assert (server.blobs / digest[:2] / digest).read_bytes() == archive

    for task_id in (made["id"], uploaded["id"]):
        got = server.request("GET", f"/api/tasks/{task_id}")
        assert got.status_code == 200, got.text
        assert got.json()["id"] == task_id
    assert {made["id"], uploaded["id"]} <= listed_task_ids(server)
    assert server.request("GET", "/healthz").status_code == 200

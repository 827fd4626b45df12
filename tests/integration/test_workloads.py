"""Approved workloads: with the option on, only code an admin approved is accepted, on every submit route."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from phage import Client
from phage.testing import CoordinatorProcess, NodeProcess, phage_cli, wait_online, wait_tasks_final


def _job(code: str, *args: str) -> dict[str, Any]:
    return {
        "kind": "job",
        "files": {"main.py": code},
        "manifest": {"entrypoint": "main.py", "args": list(args), "timeout_s": 60},
    }


def _tarball(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def test_only_approved_workloads_run(tmp_path: Path) -> None:
    coord = CoordinatorProcess(
        tmp_path / "coordinator", env={"PHAGE_APPROVED_WORKLOADS_ONLY": "true"}
    ).start()
    node = NodeProcess(coord, tmp_path / "node").start()
    try:
        wait_online(coord, 1)
        env = {**os.environ, "PHAGE_URL": coord.url, "PHAGE_API_KEY": coord.admin_key}
        hello = _job("import sys; print('hello', *sys.argv[1:])", "world")
        with coord.client() as c:
            refused = c.post("/api/tasks", json=hello)
            assert refused.status_code == 403
            body = refused.json()
            assert body["field"] == "workload" and "not approved" in body["message"]
            digest = body["message"].split("workload ")[1].split(" ")[0]
            assert digest.startswith("sha256:") and len(digest) == 71
            assert c.get("/api/tasks").json()["tasks"] == []  # nothing stored, nothing queued
            assert c.post("/api/tasks", json={"kind": "noop"}).status_code == 201  # runs no code: allowed

            # the submitter can learn the digest without submitting, and ask for it
            (tmp_path / "task.json").write_text(json.dumps(hello))
            shown = phage_cli("workloads", "digest", str(tmp_path / "task.json"), env=env)
            assert shown.stdout.strip() == digest, shown.stderr
            with Client(coord.url, coord.admin_key) as sdk:
                asked = sdk.workload_digest(hello)
                assert asked.digest == digest and asked.approved is False
            user = c.post("/api/keys", json={"name": "u", "role": "user"}).json()["key"]
            with coord.client(user) as as_user:
                denied = as_user.post("/api/workloads", json={"digest": digest, "name": "hello"})
                assert denied.status_code == 403  # approving is an admin act

            approved = phage_cli("workloads", "approve", digest, "--name", "hello script", env=env)
            assert approved.returncode == 0, approved.stderr
            listed = json.loads(phage_cli("workloads", "list", "--json", env=env).stdout)
            assert listed["enforced"] is True and listed["workloads"][0]["name"] == "hello script"

            ok = c.post("/api/tasks", json=hello)
            again = c.post(
                "/api/tasks", json=_job("import sys; print('hello', *sys.argv[1:])", "other", "args")
            )
            assert (
                ok.status_code == 201 and again.status_code == 201
            )  # arguments are inputs, not the workload
            other = c.post("/api/tasks", json=_job("print('something else')"))
            assert other.status_code == 403
            done = wait_tasks_final(coord, [ok.json()["id"], again.json()["id"]])
            assert [t["state"] for t in done] == ["verified", "verified"]
            assert done[0]["result"]["stdout_tail"].strip() == "hello world"

            # the sandrun-compatible /submit route is held to the same rule
            files = {"files": ("ws.tar.gz", _tarball({"run.py": "print(1)"}), "application/gzip")}
            manifest = {"manifest": json.dumps({"entrypoint": "run.py"})}
            assert c.post("/submit", files=files, data=manifest).status_code == 403

        # approvals survive a restart
        coord.stop()
        coord.start()
        with coord.client() as c:
            assert c.post("/api/tasks", json=hello).status_code == 201
            assert c.delete(f"/api/workloads/{digest}").status_code == 200
            assert c.post("/api/tasks", json=hello).status_code == 403
    finally:
        node.stop()
        coord.stop()

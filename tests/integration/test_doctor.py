"""``phage doctor`` on this machine: it agrees with what the node would use, and names what to fix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from phage.sandbox.registry import STRONGEST_FIRST, available_backends

# checks of the host a node runs on; the store is not what is tested
pytestmark = pytest.mark.backend_neutral


def _doctor(tmp_path: Path, *args: str, **env: str) -> tuple[int, list[dict[str, Any]], str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PHAGE_")}
    full.update({"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home"), **env})
    done = subprocess.run(
        [sys.executable, "-m", "phage.client.cli", "doctor", "--json", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else [], done.stderr


def test_doctor_reports_sandboxes_ports_and_disk(tmp_path: Path) -> None:
    with socket.socket() as held:  # a port someone else holds: the doctor must say so
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, findings, err = _doctor(tmp_path, PHAGE_HTTP_PORT=str(port), PHAGE_GRPC_PORT="0")
    assert code == 0, err
    by_check = {f["check"]: f for f in findings}
    for name in STRONGEST_FIRST:  # the same verdict the node's sandbox choice uses
        works = available_backends()[name] is None
        assert (by_check[f"sandbox {name}"]["level"] == "ok") == works
    busy = by_check[f"port {port}"]
    assert busy["level"] == "warn" and "cannot listen" in busy["detail"] and str(port) in busy["fix"]
    assert by_check[f"disk {tmp_path / 'home' / '.phage'}"]["level"] in ("ok", "warn")
    assert {"python", "cgroups", "gpu (NVML)", "engines", "clock"} <= set(by_check)
    assert all(f["level"] in ("ok", "warn", "fail") for f in findings)


def test_doctor_fails_on_a_bad_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "phage.toml"
    conf.write_text("[node]\nmax_concurency = 2\n")
    code, findings, _ = _doctor(tmp_path, "--config", str(conf))
    assert code == 1
    (bad,) = [f for f in findings if f["check"] == "configuration"]
    assert bad["level"] == "fail" and "max_concurency" in bad["detail"] and "max_concurrency" in bad["detail"]

"""The wheel: installed alone in a clean virtualenv it is a working client of a full coordinator.

Builds the wheel from this checkout, installs it with only the base dependencies (no gRPC, no
FastAPI, no SQLAlchemy, no NVML), runs ``phage --help`` and ``phage demo --help`` from there, and
drives a coordinator started from the full install with that client: the CLI and the Python SDK.
Needs the package index (or pip's cache) for the base dependencies, as any install does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable
from pathlib import Path

import pytest

from phage.testing import CoordinatorProcess, NodeProcess, wait_online

pytestmark = pytest.mark.backend_neutral  # installing the package; the store is not what is tested

ROOT = Path(__file__).resolve().parents[2]
Pool = Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]]


def _run(argv: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd="/")


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A virtualenv holding the phage wheel and its base dependencies only."""
    tmp = tmp_path_factory.mktemp("wheel")
    # the checkout must not leak in: no PYTHONPATH, no editable install on the path
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # build from a copy of what a release holds, so the checkout gets no build/ or egg-info
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = _run([*pip_wheel, "-w", str(tmp), str(source)], env)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp.glob("phage-*.whl")
    target = tmp / "venv"
    venv.create(target, with_pip=True)
    installed = _run([str(target / "bin" / "pip"), "install", "-q", str(wheel)], env)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return target, env


def test_base_install_is_client_only(client_venv: tuple[Path, dict[str, str]]) -> None:
    target, env = client_venv
    py = str(target / "bin" / "python")
    where = _run([py, "-c", "import phage; print(phage.__file__)"], env)
    assert str(target) in where.stdout, "the clean venv must import the installed wheel, not the checkout"
    for heavy in ("grpc", "fastapi", "sqlalchemy", "pynvml", "uvicorn"):
        probe = _run([py, "-c", f"import {heavy}"], env)
        assert probe.returncode != 0, f"{heavy} is installed by the base install"
    for argv in (["--help"], ["demo", "--help"], ["coordinator", "--help"], ["node", "--help"]):
        shown = _run([str(target / "bin" / "phage"), *argv], {**env, "COLUMNS": "120"})
        assert shown.returncode == 0, shown.stderr
        assert "Usage" in shown.stdout
    doctor = _run([str(target / "bin" / "phage"), "doctor", "--json"], {**env, "PHAGE_HTTP_PORT": "0"})
    extras = {f["check"]: f for f in json.loads(doctor.stdout)}
    assert extras["coordinator extra"]["level"] == "warn"
    assert extras["coordinator extra"]["fix"] == "pip install 'phage[coordinator]'"
    stub = _run(
        [py, "-c", "import phage, pathlib; print(pathlib.Path(phage.__file__).with_suffix('.pyi').exists())"],
        env,
    )
    assert stub.stdout.strip() == "True"  # the typed front ships with the wheel
    assert (ROOT / "LICENSE").read_text().startswith("\n                                 Apache License")


def test_wheel_client_drives_a_full_coordinator(
    client_venv: tuple[Path, dict[str, str]], pool: Pool, tmp_path: Path
) -> None:
    target, env = client_venv
    coord, _ = pool(nodes=1)  # started from the full install (this interpreter)
    wait_online(coord, 1)
    cli_env = {**env, "PHAGE_URL": coord.url, "PHAGE_API_KEY": coord.admin_key}
    phage = str(target / "bin" / "phage")
    submitted = _run([phage, "submit", "--noop", "--wait", "--json"], cli_env, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    (task,) = json.loads(submitted.stdout)
    assert task["state"] == "verified"
    nodes = json.loads(_run([phage, "nodes", "--json"], cli_env, timeout=60).stdout)
    assert [n["state"] for n in nodes] == ["online"]

    script = (
        "import sys\n"
        "from phage import Client, Task\n"
        "with Client(sys.argv[1], sys.argv[2]) as c:\n"
        "    t = c.submit({'kind': 'job', 'files': {'m.py': 'print(6 * 7)'},\n"
        "                  'manifest': {'entrypoint': 'm.py', 'timeout_s': 60}})\n"
        "    done = c.wait(t.id, timeout=60, poll_s=0.1)\n"
        "    assert isinstance(done, Task)\n"
        "    print(done.state, done.result.stdout_tail.strip())\n"
    )
    ran = _run([str(target / "bin" / "python"), "-c", script, coord.url, coord.admin_key], env, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["verified", "42"]

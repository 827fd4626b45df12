"""The real `phage coordinator` and `phage node` honour file, environment and flags in that order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from phage.testing import free_port, wait_until

# configuration layering at start-up; the store is not what is tested
pytestmark = pytest.mark.backend_neutral


def _phage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phage.client.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHAGE_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")  # no stray default file from the machine
    env.update(extra)
    return env


def test_print_config_reports_each_key_from_its_layer(tmp_path: Path) -> None:
    conf = tmp_path / "phage.toml"
    conf.write_text(
        "[coordinator]\nmin_quorum = 3\nhttp_port = 7001\nspot_check = 0.2\n"
        '[node]\nname = "file"\nmax_concurrency = 2\nfetch_wait_ms = 100\n'
    )
    env = _clean_env(tmp_path, PHAGE_CONFIG=str(conf), PHAGE_HTTP_PORT="7002", PHAGE_SPOT_CHECK="0.3")
    env["PHAGE_NODE_MAX_CONCURRENCY"] = "3"
    out = _phage("coordinator", "--print-config", "--http", "0.0.0.0:7003", env=env)
    assert out.returncode == 0, out.stderr
    got: dict[str, Any] = json.loads(out.stdout)
    assert got["min_quorum"] == {"value": 3, "source": f"{conf} [coordinator]"}
    assert got["spot_check"] == {"value": 0.3, "source": "environment"}
    assert got["http_port"] == {"value": 7003, "source": "command line"}
    assert got["http_host"] == {"value": "0.0.0.0", "source": "command line"}
    assert got["grpc_port"] == {"value": 9090, "source": "default"}

    out = _phage("node", "--print-config", "--name", "flag", env=env)
    assert out.returncode == 0, out.stderr
    node: dict[str, Any] = json.loads(out.stdout)
    assert node["name"] == {"value": "flag", "source": "command line"}
    assert node["max_concurrency"] == {"value": 3, "source": "environment"}
    assert node["fetch_wait_ms"] == {"value": 100, "source": f"{conf} [node]"}
    assert node["sandbox"]["source"] == "default"


def test_bad_file_stops_the_command_naming_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "phage.toml"
    conf.write_text("[node]\nconcurrency = 8\n")
    out = _phage("node", "--config", str(conf), env=_clean_env(tmp_path))
    assert out.returncode == 2
    assert "unknown key 'concurrency' in [node]" in out.stderr.replace("\n", " ")
    conf.write_text('[coordinator]\nheartbeat_interval_s = "soon"\n')
    out = _phage("coordinator", "--config", str(conf), env=_clean_env(tmp_path))
    assert out.returncode == 2 and "heartbeat_interval_s" in out.stderr


def test_coordinator_listens_where_the_environment_says(tmp_path: Path) -> None:
    """The bug this replaces: ``PHAGE_HTTP_PORT`` and friends were silently overridden by flag defaults."""
    http_port, grpc_port, enroll_port = free_port(), free_port(), free_port()
    env = _clean_env(
        tmp_path,
        PHAGE_DATA_DIR=str(tmp_path / "data"),
        PHAGE_HTTP_PORT=str(http_port),
        PHAGE_GRPC_PORT=str(grpc_port),
        PHAGE_ENROLL_PORT=str(enroll_port),
        PHAGE_HEARTBEAT_INTERVAL_S="0.5",
        COLUMNS="200",  # the join line must not depend on the terminal: it is never wrapped by rich
    )
    log = tmp_path / "coordinator.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "phage.client.cli", "coordinator"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: (
                "ca-fingerprint" in log.read_text()
                and log.read_text().rstrip().endswith(tuple("0123456789abcdef"))
            ),
            60,
            what="the coordinator's join line",
        )
        assert httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=5).status_code == 200
        info = json.loads((tmp_path / "data" / "coordinator.json").read_text())
        assert info["grpc_address"] == f"127.0.0.1:{grpc_port}"
        assert info["enroll_address"] == f"127.0.0.1:{enroll_port}"
        text = log.read_text()
        assert "alembic" not in text.lower(), text  # no migration chatter at start-up
        join = text[text.index("phage node") :].rstrip()
        lines = join.splitlines()
        assert all(len(line) <= 80 for line in lines), lines
        assert not any(ch in join for ch in "│╭╰"), "join line inside a panel"
        # pasted into a shell, the continuation lines make one command with every flag
        words = join.replace("\\\n", " ").split()
        assert words[:2] == ["phage", "node"]
        assert "--token" not in words  # the token rides in the environment, never in argv
        assert f"PHAGE_JOIN_TOKEN={info['join_token']} phage node" in text
        assert words[words.index("--ca-fingerprint") + 1] == info["ca_fingerprint"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)

"""HTTPS end to end: the CLI, the SDK and the official ``openai`` client, trusting the pool's CA by pin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from phage import Client
from phage.client.pinning import pinned_ca, tls_context
from phage.pki import CertificateAuthority
from phage.testing import CoordinatorProcess, NodeProcess, free_port, phage_cli, wait_online, wait_until

# TLS on the HTTP edge; the store behind it is tested on both backends elsewhere
pytestmark = pytest.mark.backend_neutral

MODEL = "standin-7b"
STANDIN = f"{sys.executable} -m phage.node.engines.standin"


@pytest.fixture
def tls_pool(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    """A coordinator serving HTTPS with a certificate from its own CA, and one node."""
    coord = CoordinatorProcess(tmp_path / "coordinator", args=("--https",)).start()
    node = NodeProcess(coord, tmp_path / "node").start()
    try:
        wait_online(coord, 1)
        yield coord
    finally:
        node.stop()
        coord.stop()


def _cli(coord: CoordinatorProcess, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PHAGE_URL": coord.url, "PHAGE_API_KEY": coord.admin_key, **env}
    full["XDG_CACHE_HOME"] = env.get("XDG_CACHE_HOME", str(coord.data_dir.parent / "cache"))
    return phage_cli(*args, env=full)


def test_cli_pins_the_pool_ca_like_a_node(tls_pool: CoordinatorProcess) -> None:
    coord = tls_pool
    assert coord.url.startswith("https://")
    fingerprint = coord.info["ca_fingerprint"]
    assert coord.info["http_url"].startswith("https://")

    done = _cli(coord, "--ca-fingerprint", fingerprint, "submit", "--noop", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["state"] == "verified"
    # the same pin through the environment, for scripts
    nodes = _cli(coord, "nodes", "--json", PHAGE_CA_FINGERPRINT=fingerprint)
    assert nodes.returncode == 0 and json.loads(nodes.stdout)[0]["state"] == "online"

    unpinned = _cli(coord, "status", "--json")  # the system trust store does not know the pool's CA
    assert unpinned.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in unpinned.stderr.replace("\n", "")
    wrong = _cli(coord, "--ca-fingerprint", "sha256:" + "ab" * 32, "status", "--json")
    assert wrong.returncode == 1 and "not the pinned" in wrong.stderr.replace("\n", " ")
    with pytest.raises(httpx.RemoteProtocolError):  # plain HTTP on the TLS port gets no answer at all
        httpx.get(coord.url.replace("https://", "http://") + "/healthz", timeout=5)


def test_sdk_and_openai_client_over_tls(tls_pool: CoordinatorProcess, tmp_path: Path) -> None:
    coord = tls_pool
    fingerprint = coord.info["ca_fingerprint"]
    os.environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    try:
        with Client(coord.url, coord.admin_key, ca_fingerprint=fingerprint) as c:
            made = c.submit(
                {"kind": "job", "files": {"m.py": "print(6 * 7)"}, "manifest": {"entrypoint": "m.py"}}
            )
            done = c.wait(made.id, timeout=60, poll_s=0.1)
            assert done.succeeded and done.result is not None and done.result.stdout_tail.strip() == "42"
        ca_file = pinned_ca(coord.url, fingerprint)
        assert ca_file.read_text() == coord.ca_file.read_text()  # cached: the pin is checked once
    finally:
        del os.environ["XDG_CACHE_HOME"]

    http = httpx.Client(verify=tls_context(ca_file))
    ai = openai.OpenAI(base_url=coord.url + "/v1", api_key=coord.admin_key, http_client=http)
    assert list(ai.models.list()) == []  # no engine in this pool yet: an empty list, over verified TLS
    with pytest.raises(openai.APIStatusError) as err:
        ai.chat.completions.create(model="nothing-serves-this", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code in (404, 503)

    # a node with an engine joins: one real chat completion through the pool, over verified TLS
    engine_node = NodeProcess(
        coord,
        tmp_path / "engine-node",
        name="gpu-0",
        engine="vllm",
        model=MODEL,
        args=("--engine-command", STANDIN, "--engine-port", str(free_port())),
    ).start()
    try:
        wait_until(lambda: MODEL in [m.id for m in ai.models.list()], 90, what=f"{MODEL} listed")
        answer = ai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "say hello"}], max_tokens=8
        )
        assert answer.choices[0].message.content, answer
        assert answer.model == MODEL and answer.usage is not None and answer.usage.completion_tokens > 0
        streamed = ai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "say hello"}], max_tokens=8, stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    finally:
        engine_node.stop()
    with pytest.raises(openai.APIConnectionError):  # without the CA, the official client refuses the pool
        openai.OpenAI(base_url=coord.url + "/v1", api_key=coord.admin_key, max_retries=0).models.list()


def test_operator_certificate_and_key(tmp_path: Path) -> None:
    operator_ca = CertificateAuthority.load_or_create(tmp_path / "operator-ca")
    cert, key = operator_ca.issue_server_cert(["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert + operator_ca.cert_pem)
    (tmp_path / "key.pem").write_bytes(key)
    args = ("--tls-cert-file", str(tmp_path / "cert.pem"), "--tls-key-file", str(tmp_path / "key.pem"))
    coord = CoordinatorProcess(tmp_path / "coordinator", args=args).start()
    try:
        ca = str(tmp_path / "operator-ca" / "ca.pem")
        shown = _cli(coord, "--ca-cert", ca, "status", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["nodes"]["total"] == 0
        # the pool's own CA is not what signed this certificate: pinning it is refused
        pool_ca = _cli(coord, "--ca-cert", str(coord.ca_file), "status")
        assert pool_ca.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in pool_ca.stderr.replace("\n", "")
    finally:
        coord.stop()


def test_tls_key_without_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "phage.client.cli", "coordinator", "--tls-key-file", str(tmp_path / "k.pem")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PHAGE_DATA_DIR": str(tmp_path)},
    )
    assert out.returncode == 2 and "tls_cert_file and tls_key_file go together" in out.stderr.replace(
        "\n", " "
    )

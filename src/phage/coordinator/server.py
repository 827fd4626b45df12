"""Running a coordinator: the gRPC listeners (node + enrollment) and the HTTP server together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn

from phage.config import ConfigError
from phage.coordinator.auth_limit import AuthFailureLimit
from phage.coordinator.core import Coordinator
from phage.coordinator.enrollment import EnrollmentServicer, enrollment_options
from phage.coordinator.http import create_app
from phage.coordinator.http_guard import HttpLimits, guarded_protocol
from phage.coordinator.ratelimit import Rate, RateLimiter
from phage.coordinator.request_ids import RequestIds
from phage.coordinator.settings import CoordinatorSettings
from phage.coordinator.training_grpc import TrainingServicer
from phage.pki import CertificateAuthority
from phage.pki.ca import write_private
from phage.protocol.v1 import dataplane_pb2_grpc as dp_grpc
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc
from phage.protocol.v1 import training_pb2_grpc as tpb_grpc

log = logging.getLogger("phage.coordinator")

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 80 * 1024 * 1024),
    ("grpc.max_send_message_length", 80 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True)
class ServerInfo:
    """Where a running coordinator listens, and what a node needs to join."""

    http_url: str
    grpc_address: str
    enroll_address: str
    join_token: str
    ca_fingerprint: str
    admin_key: str
    data_dir: str

    def node_command(self) -> str:
        """The paste-ready line that joins a node to this pool.

        The token rides in the environment, never in ``phage node``'s argv, which any user of
        the node's machine can read in a process listing.
        """
        return (
            f"PHAGE_JOIN_TOKEN={self.join_token} phage node --coordinator {self.grpc_address} "
            f"--enroll {self.enroll_address} --ca-fingerprint {self.ca_fingerprint}"
        )

    def node_command_lines(self, width: int = 80) -> str:
        """The join line broken with shell continuations so that no line is wider than ``width``.

        Printed bare (no panel, no terminal wrapping), it pastes into a shell as one command.
        """
        words = self.node_command().split(" ")
        start = words.index("node") + 1  # the environment assignment stays before the command
        rest = words[start:]
        parts = [" ".join(words[:start])] + [
            f"{flag} {value}" for flag, value in zip(rest[::2], rest[1::2], strict=True)
        ]
        lines: list[str] = []
        for part in parts:
            if lines and len(lines[-1]) + 1 + len(part) + 2 <= width:
                lines[-1] += " " + part
            elif len("  " + part) + 2 <= width or not lines:
                lines.append(("  " if lines else "") + part)
            else:  # too wide even alone (the fingerprint): the value gets a line of its own
                flag, value = part.split(" ", 1)
                lines += ["  " + flag, "    " + value]
        return " \\\n".join(lines)


class CoordinatorServer:
    """A coordinator with its listeners; ``async with`` or start()/stop()."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.coordinator = Coordinator(settings)
        self._grpc: grpc.aio.Server | None = None
        self._enroll: grpc.aio.Server | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.info: ServerInfo | None = None

    async def start(self) -> ServerInfo:
        """Start everything; returns the addresses once all listeners accept."""
        s = self.settings
        c = self.coordinator
        await c.start()
        assert c.ca is not None
        host = s.advertise_host or s.grpc_host
        server_cert, server_key = c.ca.issue_server_cert([host, s.grpc_host])
        self._grpc = grpc.aio.server(options=GRPC_OPTIONS)
        from phage.coordinator.grpc_service import PhageCoordinatorServicer, RelayServicer

        pb_grpc.add_PhageCoordinatorServicer_to_server(PhageCoordinatorServicer(c), self._grpc)  # type: ignore[no-untyped-call]
        dp_grpc.add_PhageRelayServicer_to_server(  # type: ignore[no-untyped-call]
            RelayServicer(c.relay, lambda peer: c.nodes.authenticate(peer, "").node.id), self._grpc
        )
        tpb_grpc.add_PhageTrainingServicer_to_server(  # type: ignore[no-untyped-call]
            TrainingServicer(c.training, lambda peer, claimed: c.nodes.authenticate(peer, claimed).node.id),
            self._grpc,
        )
        mtls = grpc.ssl_server_credentials(
            [(server_key, server_cert)], root_certificates=c.ca.cert_pem, require_client_auth=True
        )
        grpc_port = self._grpc.add_secure_port(f"{s.grpc_host}:{s.grpc_port}", mtls)
        await self._grpc.start()
        # Enrollment: its own server with small limits, since anyone may reach it; TLS with the CA
        # certificate itself, no client certificate (see pki.enroll and coordinator.enrollment).
        self._enroll = grpc.aio.server(options=enrollment_options(s))
        pb_grpc.add_PhageCoordinatorServicer_to_server(  # type: ignore[no-untyped-call]
            EnrollmentServicer(register=c.nodes.register, is_known=c.pool.nodes.__contains__, settings=s),
            self._enroll,
        )
        enroll = grpc.ssl_server_credentials([(c.ca.key_pem, c.ca.cert_pem)])
        enroll_port = self._enroll.add_secure_port(f"{s.grpc_host}:{s.enrollment_port}", enroll)
        await self._enroll.start()

        tls = https_files(s, c.ca, c.dirs.pki) if s.serves_https else None
        app = AuthFailureLimit(
            RequestIds(create_app(c)),
            RateLimiter(Rate(s.auth_failures_burst, s.auth_failures_per_s), "failed API keys"),
        )
        config = uvicorn.Config(
            app,
            host=s.http_host,
            port=s.http_port,
            http=guarded_protocol(
                HttpLimits(s.http_max_header_bytes, s.http_header_timeout_s, s.http_max_connections)
            ),
            timeout_keep_alive=s.http_keep_alive_s,
            log_level="warning",
            lifespan="off",
            ws_ping_interval=20,
            ws_max_size=1024 * 1024,
            timeout_graceful_shutdown=2,
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
        self._http = uvicorn.Server(config)
        self._http.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
        self._http_task = asyncio.create_task(self._http.serve())
        while not self._http.started:
            if self._http_task.done():
                await self._http_task
                raise RuntimeError(f"HTTP server failed to start on {s.http_host}:{s.http_port}")
            await asyncio.sleep(0.02)
        http_port = s.http_port
        if http_port == 0:
            http_port = self._http.servers[0].sockets[0].getsockname()[1]
        self.info = ServerInfo(
            http_url=f"{'https' if tls else 'http'}://{_fmt_host(s.http_host)}:{http_port}",
            grpc_address=f"{_fmt_host(host)}:{grpc_port}",
            enroll_address=f"{_fmt_host(host)}:{enroll_port}",
            join_token=c.join_token,
            ca_fingerprint=c.ca.fingerprint,
            admin_key=c.admin_key,
            data_dir=str(c.dirs.root),
        )
        # Tools and tests find a coordinator started on port 0 through this file.
        write_private(
            c.dirs.info_file,
            json.dumps(
                {k: v for k, v in dataclasses.asdict(self.info).items() if k != "admin_key"}, indent=1
            ),
        )
        return self.info

    async def stop(self) -> None:
        """Stop accepting, then close the store."""
        if self._http is not None:
            self._http.should_exit = True
        if self._enroll is not None:
            await self._enroll.stop(grace=0.5)
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._http_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, 5)
        await self.coordinator.stop()


def https_files(s: CoordinatorSettings, ca: CertificateAuthority, pki_dir: Path) -> tuple[Path, Path]:
    """The HTTPS certificate and key files: the operator's, or a certificate from the pool's CA.

    The CA-issued certificate is made fresh at every start (cheap, and it follows changes to the
    names) and written with the CA certificate after it, so clients that pin the CA by fingerprint
    can verify the chain.
    """
    if s.tls_cert_file is not None and s.tls_key_file is not None:
        for path, option in ((s.tls_cert_file, "tls_cert_file"), (s.tls_key_file, "tls_key_file")):
            if not path.is_file():
                raise ConfigError(f"{option} {path} does not exist", field=option)
        return s.tls_cert_file, s.tls_key_file
    names = [s.http_host, s.advertise_host or "", socket.gethostname()]
    names += [n.strip() for n in s.https_names.split(",") if n.strip()]
    cert, key = ca.issue_server_cert([n for n in names if n and n not in ("0.0.0.0", "::")])
    cert_path, key_path = pki_dir / "https-cert.pem", pki_dir / "https-key.pem"
    key_path.touch(mode=0o600)
    key_path.write_bytes(key)
    cert_path.write_bytes(cert + ca.cert_pem)
    return cert_path, key_path


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def run_forever(settings: CoordinatorSettings, on_ready: Callable[[ServerInfo], None]) -> None:
    """Run until SIGINT/SIGTERM."""
    server = CoordinatorServer(settings)
    info = await server.start()
    on_ready(info)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()

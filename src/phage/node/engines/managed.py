"""An OpenAI-compatible server the node runs itself as a subprocess (vLLM, llama.cpp).

The node owns the server's whole life: it picks a free port, starts the
server in its own process group with its output in a log file, waits until it
answers its health check, restarts it when it dies (with backoff), switches
models by restarting it, and on close stops the whole process group — so a
crashed or switched server never leaves a GPU held by an orphan.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from phage.errors import EngineError
from phage.node.engines.openai_compat import OpenAIEngine

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def split_command(command: str | Sequence[str] | None) -> list[str]:
    """A command prefix from an option or environment variable: a shell-quoted string or an argv list."""
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` behind ``setpriv --pdeathsig TERM`` where util-linux has it (every Debian).

    Linux then SIGTERMs the server if the node dies without closing it — without it a
    node killed with SIGKILL would leave the server holding the GPU. A wrapper
    program rather than a pre-exec hook: a Python hook forces ``fork()`` in a process
    running gRPC's threads, whose fork handlers can abort the child
    (``ev_epoll1_linux.cc: Check failed``); without one, the child is spawned with
    ``vfork`` and runs no handlers.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


class ManagedServerEngine(OpenAIEngine):
    """Runs and supervises the server subprocess; subclasses say how to build its command line."""

    command_env = ""
    """Environment variable that overrides the command prefix (``PHAGE_VLLM_COMMAND``…)."""
    trust_env = False  # the server is on loopback: never through a proxy

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        port: int | None = None,
        command: str | Sequence[str] | None = None,
        log_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 900.0,
        stop_grace_s: float = 10.0,
        restart_backoff_s: float = 1.0,
        restart_backoff_max_s: float = 60.0,
        timeout_s: float = 600.0,
    ) -> None:
        super().__init__("http://127.0.0.1", "", name=name, timeout_s=timeout_s)
        self.model_path = model
        """What the server loads: a hub id, a directory or a GGUF file."""
        self.port = port
        self.command = split_command(command) or split_command(os.environ.get(self.command_env) or None)
        """Command prefix overriding the engine's own (tests launch a stand-in through it)."""
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir()) / "phage-engines"
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.restart_backoff_s = restart_backoff_s
        self.restart_backoff_max_s = restart_backoff_max_s
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        """Times the watchdog restarted a server that died on its own."""
        self.last_error = ""
        """Why the last start or restart failed ("" when none has)."""
        self.started_s = 0.0
        """Seconds the last (re)start took from launch to healthy."""
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False
        self._log_offset = 0

    # -- what subclasses provide ---------------------------------------------------------------

    @abc.abstractmethod
    def argv(self, port: int) -> list[str]:
        """The server's full command line for ``self.model_path`` on ``port``."""

    def default_name(self) -> str:
        """The name tasks use when none was given (the model as passed, by default)."""
        return self.model_path

    # -- naming ------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The name tasks use; the server is told to serve the model under it."""
        return self._name or self.default_name()

    @property
    def served_model(self) -> str:
        """Requests name the model as the server was told to serve it."""
        return self.model

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr, appended across restarts."""
        return self.log_dir / f"{self.name}-{self.port}.log"

    def log_tail(self, limit: int = 2000) -> str:
        """The end of what the current server run wrote, for error messages."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, f.tell() - limit))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the server and return once it is healthy; a watchdog restarts it if it dies."""
        async with self._lock:
            if self._alive() and self._ready.is_set():
                return
            self._closing = False
            if self.port is None:
                self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            await self._launch()
            self._watch()

    def _alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def _launch(self) -> None:
        """Run the server and wait until it is healthy; on failure it is stopped and EngineError raised."""
        assert self.port is not None
        argv = self.argv(self.port)
        self._ready.clear()
        began = time.monotonic()
        if shutil.which(argv[0]) is None:  # say so plainly, not as an exit code from the wrapper
            self.last_error = f"cannot run the {self.name} server `{shlex.join(argv)}`: {argv[0]} not found"
            raise EngineError(self.last_error)
        with self._open_log(argv) as out:
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *die_with_parent(argv),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, **self.env},
                )
            except OSError as exc:
                self.last_error = f"cannot run the {self.name} server `{shlex.join(argv)}`: {exc}"
                raise EngineError(self.last_error) from exc
        process = self.process
        try:
            await self._wait_healthy(process, argv)
            await self.refresh_models()
        except BaseException:
            await self._terminate(process)
            raise
        self.started_s = time.monotonic() - began
        log.info(
            "%s server ready on port %s in %.2f s (pid %s)", self.name, self.port, self.started_s, process.pid
        )
        self._ready.set()

    def _open_log(self, argv: list[str]) -> BinaryIO:
        """The log file, opened for appending, after a line saying what runs (where its tail starts)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")  # noqa: SIM115 - the caller closes it
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} phage runs: {shlex.join(argv)}\n".encode())
        out.flush()
        self._log_offset = out.tell()
        return out

    async def _wait_healthy(self, process: asyncio.subprocess.Process, argv: list[str]) -> None:
        """Poll the health check until it passes; fail clearly if the server exits or takes too long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout_s
        pause = 0.01
        while True:
            if process.returncode is not None:
                self.last_error = (
                    f"the {self.name} server exited with code {process.returncode} before it was ready;"
                    f" command: {shlex.join(argv)}; log {self.log_path}:\n{self.log_tail()}"
                )
                raise EngineError(self.last_error)
            if await self.health():
                return
            if loop.time() > deadline:
                self.last_error = (
                    f"the {self.name} server was not ready after {self.startup_timeout_s:g} s;"
                    f" command: {shlex.join(argv)}; log {self.log_path}:\n{self.log_tail()}"
                )
                raise EngineError(self.last_error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), pause)
            pause = min(pause * 1.5, 0.5)

    def _watch(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._supervise(), name=f"{self.name}-watchdog")

    async def _supervise(self) -> None:
        """Restart the server whenever it dies on its own: at once, then with doubling pauses."""
        failures = 0
        while not self._closing:
            process = self.process
            assert process is not None
            healthy_since = time.monotonic()
            code = await process.wait()
            if self._closing:
                return
            self._ready.clear()
            if time.monotonic() - healthy_since > 60:
                failures = 0  # it ran a good while: a fresh crash, not a crash loop
            log.warning("%s server (pid %s) exited with code %s; restarting", self.name, process.pid, code)
            while not self._closing:
                pause = 0.0 if failures == 0 else self.restart_backoff_s * 2 ** (failures - 1)
                failures += 1
                await asyncio.sleep(min(pause, self.restart_backoff_max_s))
                async with self._lock:
                    if self._closing:
                        return
                    self.restarts += 1
                    try:
                        await self._launch()
                        break
                    except EngineError as exc:
                        log.error("restart %d failed: %s", self.restarts, exc)

    async def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM the server's process group, wait ``stop_grace_s``, then SIGKILL what is left."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.stop_grace_s)
            except TimeoutError:
                log.warning("%s server ignored SIGTERM for %g s; killing it", self.name, self.stop_grace_s)
        # Workers the server forked may outlive it; they are in its group, the leader's pid names it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()

    def models(self) -> list[str]:
        """Exactly the model the server was (or is being) started with.

        Not the server's last ``/v1/models`` answer: during a switch that still names
        the old model, and the coordinator would send work for it here.
        """
        return [self.model] if self.model else []

    @property
    def can_load(self) -> bool:
        """Any model the server program can load: the node restarts it with the new one."""
        return True

    async def load(self, model: str) -> None:
        """Restart the server on ``model``; if that fails, go back to the previous model and raise."""
        if model == self.model and self._alive():
            return
        async with self._lock:
            await self._stop_watchdog()
            if self.process is not None:
                await self._terminate(self.process)
            previous = (self.model_path, self._name)
            self.model_path, self._name = model, None
            if self.port is None:
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
            try:
                await self._launch()
            except EngineError as exc:
                self.model_path, self._name = previous
                with contextlib.suppress(EngineError):
                    await self._launch()
                raise EngineError(f"cannot load {model!r}: {exc.message}") from exc
            finally:
                if self.process is not None and not self._closing:
                    self._watch()  # even when both failed: the watchdog keeps trying, with backoff

    async def health(self) -> bool:
        """True when our server process runs and answers its health check."""
        return self._alive() and await super().health()

    async def before_request(self) -> None:
        """Start the server on first use; while the watchdog restarts it, wait for it."""
        if self._closing:
            raise EngineError(f"the {self.name} engine is closed")
        if self.process is None:
            await self.start()
        if not self._ready.is_set():
            switching = self._lock.locked()  # load() is restarting it on another model
            if not switching and (self._watchdog is None or self._watchdog.done()):
                # start() failed: nothing will bring it up
                raise EngineError(f"the {self.name} server is not running: {self.last_error}")
            try:
                await asyncio.wait_for(self._ready.wait(), self.startup_timeout_s)
            except TimeoutError:
                raise EngineError(f"the {self.name} server is down: {self.last_error}") from None

    async def close(self) -> None:
        """Stop the watchdog, then the server's whole process group, then the HTTP client."""
        self._closing = True
        await self._stop_watchdog()
        async with self._lock:
            if self.process is not None:
                await self._terminate(self.process)
            self._ready.clear()
        await super().close()

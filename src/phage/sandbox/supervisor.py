"""The supervisor of a warm sandbox: pid 1 inside it, running one task after another.

This file's source is what a warm bwrap sandbox runs (``python3 -I -S -c``), with
the sandbox's end of a ``SOCK_SEQPACKET`` pair as its argument. It imports only
the standard library and nothing of phage: inside the sandbox there is no phage.

Why pid 1: the kernel delivers no signal to a pid namespace's init from inside
that namespace unless init handles it, so a task (the same uid) cannot kill or
stop its supervisor; ``kill(-1)`` from init reaches every other process of the
namespace, so ending a task's leftovers is one call; and orphans are re-parented
to init, which reaps them. The supervisor makes itself non-dumpable, so the task
cannot ptrace it or read its memory, environment or descriptors through ``/proc``.

Messages (JSON, one per datagram):

- ``{"op": "run", "argv": [...], "env": {...}}`` with the task's stdout and stderr
  pipes attached (``SCM_RIGHTS``): the supervisor starts the task (``posix_spawn``:
  its own session, stdin ``/dev/null``, no other descriptors, default signal
  dispositions, cwd ``/workspace``, the program found on the task's ``PATH``)
  and, once it has ended, kills every process it left behind, empties ``/tmp``
  and ``/dev/shm``, removes System V IPC objects, checks that nothing is left (no
  other process, no file, no object) and answers ``{"exit": code, "clean": bool,
  "problem": "..."}``; the code follows bwrap's: 128 + the signal that ended the
  task, 1 when it could not be executed.

The node empties ``/workspace`` itself (it is the node's volume, and it reads the
task's outputs from it first). Any other message, or a closed socket, ends the
supervisor, and with it the sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import stat
import sys

PR_SET_DUMPABLE = 4
IPC_RMID = 0
WORKSPACE = "/workspace"
SCRUBBED = ("/tmp", "/dev/shm")
SYSV = ("shm", "sem", "msg")
MAX_MESSAGE = 1 << 20


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


_LIBC: ctypes.CDLL | None = None


def _end_the_rest() -> None:
    """SIGKILL every process in the namespace but this one, and reap them all."""
    for _ in range(10_000):
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        if not _others():
            return


def _others() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _resolve(name: str, env: dict[str, str]) -> str | None:
    """What ``execvp`` would run for ``name``, searching the task's own ``PATH``."""
    if "/" in name:
        return name
    for folder in env.get("PATH", "/usr/bin:/bin").split(":"):
        path = os.path.join(folder or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _spawn(argv: list[str], env: dict[str, str], out: int, err: int) -> int | None:
    """Start the task (``posix_spawn``: no copy of this process); its pid, or None when it could not."""
    path = _resolve(argv[0], env)
    try:
        if path is None:
            raise FileNotFoundError(2, "No such file or directory")
        return os.posix_spawn(
            path,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, err, 2),
            ],
            setsid=True,
            setsigdef=(signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError as exc:
        os.write(err, f"execvp {argv[0]}: {exc.strerror}\n".encode())
        return None


def _run(msg: dict[str, object], fds: list[int]) -> dict[str, object]:
    argv, env = msg.get("argv"), msg.get("env")
    if len(fds) != 2 or not isinstance(argv, list) or not argv or not isinstance(env, dict):
        for fd in fds:
            os.close(fd)
        return {"error": "a run needs argv, env and two pipes"}
    for fd in fds:
        os.set_inheritable(fd, False)  # the task gets them as 1 and 2 only
    pid = _spawn([str(a) for a in argv], {str(k): str(v) for k, v in env.items()}, fds[0], fds[1])
    for fd in fds:
        os.close(fd)
    if pid is None:
        return {"exit": 1, **_scrub()}
    status = 0
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            break
    return {"exit": _exit_code(status), **_scrub()}


def _empty(top: str) -> None:
    def unlock(func: object, path: str, _exc: object) -> None:
        parent = os.path.dirname(path)
        try:
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass

    try:
        names = os.listdir(top)
    except OSError:
        return
    for name in names:
        path = os.path.join(top, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, onerror=unlock)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _sysv_ids(kind: str) -> list[int]:
    try:
        with open(f"/proc/sysvipc/{kind}") as fh:
            rows = fh.read().splitlines()[1:]
    except OSError:
        return []
    return [int(row.split()[1]) for row in rows if row.split()]


def _remove_sysv(libc: ctypes.CDLL) -> None:
    for ident in _sysv_ids("shm"):
        libc.shmctl(ident, IPC_RMID, None)
    for ident in _sysv_ids("sem"):
        libc.semctl(ident, 0, IPC_RMID)
    for ident in _sysv_ids("msg"):
        libc.msgctl(ident, IPC_RMID, None)


def _scrub() -> dict[str, object]:
    """End what the task left running, empty its scratch places, check that all is gone."""
    _end_the_rest()
    for top in SCRUBBED:
        _empty(top)
    if any(_sysv_ids(kind) for kind in SYSV):
        _remove_sysv(_libc())
    problems = [f"process {pid} is still there" for pid in _others()]
    problems += [f"{top} is not empty" for top in SCRUBBED if os.listdir(top)]
    problems += [f"System V {kind} objects are left" for kind in SYSV if _sysv_ids(kind)]
    return {"clean": not problems, "problem": "; ".join(problems)}


def main() -> None:
    """Serve the node until it closes the socket."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    sock = socket.socket(fileno=int(sys.argv[1]))
    sock.set_inheritable(False)
    os.chdir(WORKSPACE)  # the task's cwd; the node empties the workspace, never replaces it
    sock.send(b'{"ready": true}')
    while True:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 2)
        if not data:
            return
        msg = json.loads(data)
        if msg.get("op") != "run":
            return
        reply = _run(msg, fds)
        sock.send(json.dumps(reply).encode())


if __name__ == "__main__":
    main()

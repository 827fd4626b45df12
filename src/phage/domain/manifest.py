"""The job manifest: what to run in a workspace and what to collect.

Validation lives here, not at the HTTP edge, so every entry point (REST, the
sandrun-compatible pool API, the CLI) refuses the same things with the same words.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from phage.errors import InvalidInput

MAX_ARGS = 256
MAX_ARG_LEN = 4096
MAX_ENV = 128
MAX_ENV_VALUE = 8192
MAX_OUTPUT_GLOBS = 64
MAX_TIMEOUT_S = 7 * 24 * 3600
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_INTERPRETER = re.compile(r"^[A-Za-z0-9_./+-]{1,128}$")


def safe_relative_path(value: Any, field_name: str, *, allow_glob: bool = False) -> str:
    """Return ``value`` as a normalised relative path, or raise naming ``field_name``.

    Absolute paths, ``..`` components, NUL bytes and empty paths are refused: a
    path from a user must never reach outside the task's own workspace.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"{field_name} must be a string", field=field_name)
    if not value or len(value) > 1024:
        raise InvalidInput(f"{field_name} must be 1 to 1024 characters", field=field_name)
    if "\x00" in value or "\\" in value:
        raise InvalidInput(f"{field_name} may not contain NUL or backslash", field=field_name)
    if value.startswith("/"):
        raise InvalidInput(f"{field_name} must be relative, got {value!r}", field=field_name)
    norm = posixpath.normpath(value)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{value}/":
        raise InvalidInput(f"{field_name} may not contain '..': {value!r}", field=field_name)
    if not allow_glob and any(c in norm for c in "*?["):
        raise InvalidInput(f"{field_name} may not contain glob characters", field=field_name)
    return norm


@dataclass(frozen=True, slots=True)
class JobManifest:
    """What a job runs (``interpreter entrypoint args…``) and which files it keeps."""

    entrypoint: str
    interpreter: str = "python3"
    """Program that runs the entrypoint; empty runs the entrypoint itself."""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    """Glob patterns, relative to the workspace, of files to collect."""
    timeout_s: int = 300

    def command(self) -> list[str]:
        """The argv the sandbox runs, relative to the workspace."""
        entry = self.entrypoint if "/" in self.entrypoint else f"./{self.entrypoint}"
        if self.interpreter:
            return [self.interpreter, self.entrypoint, *self.args]
        return [entry, *self.args]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the inverse of :meth:`parse`."""
        return {
            "entrypoint": self.entrypoint,
            "interpreter": self.interpreter,
            "args": list(self.args),
            "env": dict(self.env),
            "outputs": list(self.outputs),
            "timeout_s": self.timeout_s,
        }

    @classmethod
    def parse(cls, data: Any, *, max_timeout_s: int = MAX_TIMEOUT_S) -> JobManifest:
        """Validate a manifest from untrusted JSON; errors name the field and the limit."""
        if not isinstance(data, dict):
            raise InvalidInput("manifest must be a JSON object", field="manifest")
        known = {"entrypoint", "interpreter", "args", "env", "outputs", "timeout_s", "timeout"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"manifest has unknown fields: {', '.join(unknown)}", field="manifest")
        if "entrypoint" not in data:
            raise InvalidInput("manifest.entrypoint is required", field="manifest.entrypoint")
        entrypoint = safe_relative_path(data["entrypoint"], "manifest.entrypoint")

        interpreter = data.get("interpreter", "python3")
        if interpreter is None:
            interpreter = ""
        if not isinstance(interpreter, str) or (interpreter and not _INTERPRETER.match(interpreter)):
            raise InvalidInput(
                "manifest.interpreter must be a program name such as 'python3' or 'bash'",
                field="manifest.interpreter",
            )

        args = data.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise InvalidInput("manifest.args must be a list of strings", field="manifest.args")
        if any("\x00" in a for a in args):
            raise InvalidInput("manifest.args may not contain NUL characters", field="manifest.args")
        if len(args) > MAX_ARGS or any(len(a) > MAX_ARG_LEN for a in args):
            raise InvalidInput(
                f"manifest.args allows at most {MAX_ARGS} arguments of {MAX_ARG_LEN} characters",
                field="manifest.args",
            )

        env = data.get("env", {})
        if not isinstance(env, dict):
            raise InvalidInput("manifest.env must be an object of strings", field="manifest.env")
        if len(env) > MAX_ENV:
            raise InvalidInput(f"manifest.env allows at most {MAX_ENV} variables", field="manifest.env")
        for key, value in env.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise InvalidInput(
                    f"manifest.env name {key!r} is not a valid variable name", field="manifest.env"
                )
            if not isinstance(value, str) or len(value) > MAX_ENV_VALUE or "\x00" in value:
                raise InvalidInput(
                    f"manifest.env[{key}] must be a string of at most {MAX_ENV_VALUE} characters, no NUL",
                    field="manifest.env",
                )

        outputs = data.get("outputs", [])
        if not isinstance(outputs, list):
            raise InvalidInput("manifest.outputs must be a list of glob patterns", field="manifest.outputs")
        if len(outputs) > MAX_OUTPUT_GLOBS:
            raise InvalidInput(
                f"manifest.outputs allows at most {MAX_OUTPUT_GLOBS} patterns", field="manifest.outputs"
            )
        globs = tuple(safe_relative_path(o, "manifest.outputs", allow_glob=True) for o in outputs)

        timeout = data.get("timeout_s", data.get("timeout", 300))
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise InvalidInput("manifest.timeout_s must be a number of seconds", field="manifest.timeout_s")
        if not 1 <= timeout <= max_timeout_s:
            raise InvalidInput(
                f"manifest.timeout_s must be between 1 and {max_timeout_s}", field="manifest.timeout_s"
            )
        return cls(
            entrypoint=entrypoint,
            interpreter=interpreter,
            args=tuple(args),
            env=dict(env),
            outputs=globs,
            timeout_s=int(timeout),
        )

"""One configuration for every role: defaults < TOML file < ``PHAGE_*`` environment < command-line flags.

Each role (``coordinator``, ``node``) is a pydantic model whose fields are its options; the same
field name is the key in the role's table of the file (``[coordinator] http_port = 8080``), the
environment variable after the role's prefix (``PHAGE_HTTP_PORT``, ``PHAGE_NODE_CONCURRENCY``) and,
spelled with dashes, the command-line flag. This module merges the layers and validates once, so a
bad value is reported with the layer and key that supplied it, not as an anonymous pydantic dump.

Why one resolver instead of each command reading its own sources: the coordinator's command used to
pass every flag's default explicitly, which silently beat the environment. Here a flag counts only
when it was given.

The file is ``--config PATH`` (or ``PHAGE_CONFIG``); without either, ``$XDG_CONFIG_HOME/phage/phage.toml``
(``~/.config/phage/phage.toml``) is read if it exists. An explicit file that is missing is an error.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, Field, ValidationError

from phage.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)

SECTIONS = ("coordinator", "node")
"""The tables a configuration file may hold, one per role."""


class ConfigError(InvalidInput):
    """A configuration value is unknown, of the wrong type or out of range; the message names the key."""


@dataclass(frozen=True)
class Role:
    """How one role's options are spelled in each layer."""

    name: str
    """The file's table (``[coordinator]``) and the command (``phage coordinator``)."""
    model: type[BaseModel]
    env_prefix: str
    """``PHAGE_`` for the coordinator, ``PHAGE_NODE_`` for nodes."""
    flags: Mapping[str, str]
    """Field name → flag where the flag is not the field's name with dashes (``--heartbeat``)."""
    envs: Mapping[str, str] = field(default_factory=dict)
    """Field name → variable where it is not the prefix and the name (``PHAGE_JOIN_TOKEN``)."""

    def flag(self, key: str) -> str:
        """The command-line flag of a key."""
        return self.flags.get(key, "--" + key.replace("_", "-"))

    def env(self, key: str) -> str:
        """The environment variable of a key."""
        return self.envs.get(key, self.env_prefix + key.upper())


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/phage/phage.toml``, or ``~/.config/phage/phage.toml``."""
    env = os.environ if environ is None else environ
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "phage" / "phage.toml"


def config_path(explicit: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The file in force: ``--config``, else ``PHAGE_CONFIG``, else the default location if it exists."""
    env = os.environ if environ is None else environ
    chosen = explicit or (Path(env["PHAGE_CONFIG"]) if env.get("PHAGE_CONFIG") else None)
    if chosen is not None:
        if not chosen.is_file():
            raise ConfigError(f"configuration file {chosen} does not exist", field="config")
        return chosen
    default = default_config_path(env)
    return default if default.is_file() else None


def read_file(path: Path) -> dict[str, dict[str, Any]]:
    """Every table of a configuration file; an unknown table or a key outside a table is an error."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", field="config") from None
    for key, value in data.items():
        if key not in SECTIONS or not isinstance(value, dict):
            raise ConfigError(
                f"{path}: unknown table or key {key!r} at the top level; options go in one of the "
                + ", ".join(f"[{s}]" for s in SECTIONS)
                + _did_you_mean(key, SECTIONS),
                field=key,
            )
    return data


def file_values(role: Role, path: Path | None) -> dict[str, Any]:
    """The role's table of the file (empty without a file); unknown keys are refused by name."""
    if path is None:
        return {}
    table = read_file(path).get(role.name, {})
    for key in table:
        if key not in role.model.model_fields:
            raise ConfigError(
                f"{path}: unknown key {key!r} in [{role.name}]"
                + _did_you_mean(key, list(role.model.model_fields)),
                field=key,
            )
    return dict(table)


def env_values(role: Role, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The role's options set in the environment (an empty variable counts as unset).

    A variable for a table or list option (model aliases, say) holds JSON: an environment
    variable is a string, and the option's type cannot be read from one any other way.
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, spec in role.model.model_fields.items():
        raw = env.get(role.env(key))
        if not raw:
            continue
        if _structured(spec.annotation):
            try:
                out[key] = json.loads(raw)
            except ValueError as exc:
                raise ConfigError(
                    f"{role.name} option {role.env(key)} (from environment): not valid JSON ({exc})",
                    field=key,
                ) from None
        else:
            out[key] = raw
    return out


def _structured(annotation: Any) -> bool:
    """True for dict and list types, also inside ``X | None``."""
    origin = get_origin(annotation)
    if origin in (dict, list, tuple) or annotation in (dict, list, tuple):
        return True
    if origin in (Union, types.UnionType):
        return any(_structured(arg) for arg in get_args(annotation) if arg is not type(None))
    return False


@dataclass(frozen=True)
class Resolved:
    """A role's settings and, per key, the layer it came from (for ``--print-config``)."""

    settings: BaseModel
    sources: Mapping[str, str]


def resolve(
    role: Role,
    *,
    flags: Mapping[str, Any],
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Resolved:
    """Merge defaults < file < environment < flags and validate once; errors name key and layer.

    ``flags`` holds only the options given on the command line (None means not given).
    """
    path = config_path(config, environ)
    layers: list[tuple[str, dict[str, Any]]] = [
        (f"{path} [{role.name}]" if path else "file", file_values(role, path)),
        ("environment", dict(env_values(role, environ))),
        ("command line", {k: v for k, v in flags.items() if v is not None}),
    ]
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer, values in layers:
        for key, value in values.items():
            merged[key] = value
            sources[key] = layer
    try:
        settings = role.model(**merged)
    except ValidationError as exc:
        raise ConfigError(_explain(role, exc, sources, merged), field=_first_key(exc)) from None
    return Resolved(settings, {k: sources.get(k, "default") for k in role.model.model_fields})


def _spelling(role: Role, key: str, layer: str) -> str:
    if layer == "environment":
        return role.env(key)
    if layer == "command line":
        return role.flag(key)
    return key


def _first_key(exc: ValidationError) -> str | None:
    errors = exc.errors()
    return str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None


def _explain(role: Role, exc: ValidationError, sources: Mapping[str, str], merged: Mapping[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else "?"
        layer = sources.get(key, "default")
        where = f"{_spelling(role, key, layer)} (from {layer})"
        got = f" (got {merged[key]!r})" if key in merged else ""
        lines.append(f"{role.name} option {where}: {err['msg']}{got}")
    return "; ".join(lines)


def _did_you_mean(key: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_SIZE_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(text: str) -> int:
    """``24GiB``, ``16GB``, ``512M`` or a byte count, as bytes; ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text, re.IGNORECASE)
    if m is None:
        raise ValueError(f"{text!r} is not a size like 24GiB or 16GB")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])


# ---- describing options (for --help and docs/configuration.md) -------------------------------------


def type_name(annotation: Any) -> str:
    """A short human name for a field's type: ``integer``, ``path``, ``one of: a, b``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        sized = any(getattr(m, "func", None) is _size for m in annotation.__metadata__)
        return "size" if sized else type_name(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return " or ".join(type_name(a) for a in inner)
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in get_args(annotation))
    names = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default_text(model: type[BaseModel], key: str) -> str:
    """The default as the docs show it (home directory as ``~``; none as ``—``)."""
    field = model.model_fields[key]
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is None:
        return "—"
    if isinstance(value, Path):
        home = str(Path.home())
        text = str(value)
        return "~" + text[len(home) :] if text.startswith(home) else text
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def description(model: type[BaseModel], key: str) -> str:
    """The field's docstring as one line."""
    return " ".join((model.model_fields[key].description or "").split())


def _size(value: object) -> object:
    return parse_size(value) if isinstance(value, str) else value


Bytes = Annotated[int, BeforeValidator(_size), Field(ge=0)]
"""A byte count that may also be written ``64MiB`` or ``2GB`` (in the file, environment or a flag)."""


def field_type(model: type[BaseModel], key: str) -> str:
    """:func:`type_name` of a field, ``size`` for :data:`Bytes` fields."""
    info = model.model_fields[key]
    if any(getattr(m, "func", None) is _size for m in info.metadata):
        return "size"
    return type_name(info.annotation)

"""JobManifest.parse and safe_relative_path: what a user's manifest may and may not say."""

from __future__ import annotations

from typing import Any

import pytest

from phage.domain.manifest import (
    MAX_ARG_LEN,
    MAX_ARGS,
    MAX_ENV,
    MAX_ENV_VALUE,
    MAX_OUTPUT_GLOBS,
    MAX_TIMEOUT_S,
    JobManifest,
    safe_relative_path,
)
from phage.errors import InvalidInput


def m(**extra: Any) -> dict[str, Any]:
    return {"entrypoint": "main.py", **extra}


# ---- JobManifest.parse --------------------------------------------------------


def test_defaults() -> None:
    parsed = JobManifest.parse({"entrypoint": "main.py"})
    assert parsed == JobManifest(entrypoint="main.py")
    assert parsed.interpreter == "python3"
    assert parsed.args == ()
    assert parsed.env == {}
    assert parsed.outputs == ()
    assert parsed.timeout_s == 300


def test_full_manifest_round_trips_through_to_dict() -> None:
    raw = {
        "entrypoint": "bin/run.sh",
        "interpreter": "bash",
        "args": ["--n", "3", ""],
        "env": {"SEED": "1", "_PRIVATE": "", "PATH2": "x" * MAX_ENV_VALUE},
        "outputs": ["out/*.txt", "logs/**/*.log", "result[0-9].json"],
        "timeout_s": MAX_TIMEOUT_S,
    }
    parsed = JobManifest.parse(raw)
    assert parsed.to_dict() == raw
    assert JobManifest.parse(parsed.to_dict()) == parsed


def test_entrypoint_is_normalised() -> None:
    assert JobManifest.parse(m(entrypoint="./src//main.py")).entrypoint == "src/main.py"


def test_timeout_alias_and_float_are_accepted() -> None:
    assert JobManifest.parse(m(timeout=12)).timeout_s == 12
    assert JobManifest.parse(m(timeout_s=2.9)).timeout_s == 2
    assert JobManifest.parse(m(timeout_s=5, timeout=99)).timeout_s == 5  # the canonical name wins


def test_null_interpreter_runs_the_entrypoint_itself() -> None:
    parsed = JobManifest.parse(m(entrypoint="run.sh", interpreter=None, args=["a"]))
    assert parsed.interpreter == ""
    assert parsed.command() == ["./run.sh", "a"]
    assert JobManifest.parse(m(entrypoint="bin/run", interpreter="")).command() == ["bin/run"]
    assert JobManifest.parse(m(args=["x"])).command() == ["python3", "main.py", "x"]


def test_max_timeout_can_be_lowered() -> None:
    assert JobManifest.parse(m(timeout_s=60), max_timeout_s=60).timeout_s == 60
    with pytest.raises(InvalidInput) as exc:
        JobManifest.parse(m(timeout_s=61), max_timeout_s=60)
    assert exc.value.field == "manifest.timeout_s"
    assert "60" in exc.value.message


def test_limits_are_inclusive() -> None:
    at_limit = m(
        args=["a" * MAX_ARG_LEN] * MAX_ARGS,
        env={f"V{i}": "" for i in range(MAX_ENV)},
        outputs=[f"o{i}" for i in range(MAX_OUTPUT_GLOBS)],
        timeout_s=1,
    )
    parsed = JobManifest.parse(at_limit)
    assert len(parsed.args) == MAX_ARGS
    assert len(parsed.env) == MAX_ENV
    assert len(parsed.outputs) == MAX_OUTPUT_GLOBS


REJECTIONS = [
    pytest.param(None, "manifest", "JSON object", id="null"),
    pytest.param(["main.py"], "manifest", "JSON object", id="list"),
    pytest.param("main.py", "manifest", "JSON object", id="string"),
    pytest.param(m(run_as_root=True), "manifest", "run_as_root", id="unknown-field"),
    pytest.param({}, "manifest.entrypoint", "required", id="no-entrypoint"),
    pytest.param({"args": ["x"]}, "manifest.entrypoint", "required", id="only-args"),
    pytest.param(m(entrypoint=7), "manifest.entrypoint", "string", id="entrypoint-int"),
    pytest.param(m(entrypoint=""), "manifest.entrypoint", "1 to 1024", id="entrypoint-empty"),
    pytest.param(m(entrypoint="../run.py"), "manifest.entrypoint", "'..'", id="entrypoint-dotdot"),
    pytest.param(m(entrypoint="/usr/bin/env"), "manifest.entrypoint", "relative", id="entrypoint-abs"),
    pytest.param(m(entrypoint="run*.py"), "manifest.entrypoint", "glob", id="entrypoint-glob"),
    pytest.param(m(entrypoint="a\x00b"), "manifest.entrypoint", "NUL", id="entrypoint-nul"),
    pytest.param(m(interpreter="python3; rm -rf /"), "manifest.interpreter", "program", id="interp-shell"),
    pytest.param(m(interpreter=3), "manifest.interpreter", "program", id="interp-int"),
    pytest.param(m(interpreter="x" * 129), "manifest.interpreter", "program", id="interp-long"),
    pytest.param(m(args="--fast"), "manifest.args", "list of strings", id="args-string"),
    pytest.param(m(args={"a": 1}), "manifest.args", "list of strings", id="args-object"),
    pytest.param(m(args=["a", 1]), "manifest.args", "list of strings", id="args-mixed"),
    pytest.param(m(args=["a"] * (MAX_ARGS + 1)), "manifest.args", str(MAX_ARGS), id="args-too-many"),
    pytest.param(m(args=["a" * (MAX_ARG_LEN + 1)]), "manifest.args", str(MAX_ARG_LEN), id="arg-too-long"),
    pytest.param(m(env=["A=1"]), "manifest.env", "object", id="env-list"),
    pytest.param(m(env={"1A": "x"}), "manifest.env", "1A", id="env-digit-first"),
    pytest.param(m(env={"A-B": "x"}), "manifest.env", "A-B", id="env-dash"),
    pytest.param(m(env={"A=B": "x"}), "manifest.env", "A=B", id="env-equals"),
    pytest.param(m(env={"": "x"}), "manifest.env", "not a valid variable name", id="env-empty-name"),
    pytest.param(m(env={"A" * 129: "x"}), "manifest.env", "not a valid variable name", id="env-long-name"),
    pytest.param(m(env={"A": 1}), "manifest.env", "A", id="env-int-value"),
    pytest.param(m(env={"A": None}), "manifest.env", "A", id="env-null-value"),
    pytest.param(
        m(env={"A": "x" * (MAX_ENV_VALUE + 1)}), "manifest.env", str(MAX_ENV_VALUE), id="env-value-long"
    ),
    pytest.param(
        m(env={f"V{i}": "" for i in range(MAX_ENV + 1)}), "manifest.env", str(MAX_ENV), id="env-too-many"
    ),
    pytest.param(m(outputs="out/*"), "manifest.outputs", "list", id="outputs-string"),
    pytest.param(m(outputs=["../*"]), "manifest.outputs", "'..'", id="outputs-dotdot"),
    pytest.param(m(outputs=["/etc/*"]), "manifest.outputs", "relative", id="outputs-abs"),
    pytest.param(m(outputs=[3]), "manifest.outputs", "string", id="outputs-int"),
    pytest.param(
        m(outputs=["o"] * (MAX_OUTPUT_GLOBS + 1)),
        "manifest.outputs",
        str(MAX_OUTPUT_GLOBS),
        id="outputs-many",
    ),
    pytest.param(m(timeout_s=0), "manifest.timeout_s", "between 1 and", id="timeout-zero"),
    pytest.param(m(timeout_s=-1), "manifest.timeout_s", "between 1 and", id="timeout-negative"),
    pytest.param(m(timeout_s=MAX_TIMEOUT_S + 1), "manifest.timeout_s", str(MAX_TIMEOUT_S), id="timeout-big"),
    pytest.param(m(timeout_s=float("nan")), "manifest.timeout_s", "between 1 and", id="timeout-nan"),
    pytest.param(m(timeout_s=float("inf")), "manifest.timeout_s", "between 1 and", id="timeout-inf"),
    pytest.param(m(timeout_s="60"), "manifest.timeout_s", "number", id="timeout-string"),
    pytest.param(m(timeout_s=True), "manifest.timeout_s", "number", id="timeout-bool"),
    pytest.param(m(timeout_s=None), "manifest.timeout_s", "number", id="timeout-null"),
]


@pytest.mark.parametrize(("raw", "field", "words"), REJECTIONS)
def test_rejection_names_its_field(raw: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        JobManifest.parse(raw)
    assert exc.value.field == field
    assert words in exc.value.message
    assert exc.value.to_dict() == {"error": "InvalidInput", "message": exc.value.message, "field": field}


# ---- safe_relative_path -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a.txt", "a.txt"),
        ("out/result.txt", "out/result.txt"),
        ("./out//result.txt", "out/result.txt"),
        ("out/./x/", "out/x"),
        ("...", "..."),
        ("..hidden", "..hidden"),
        ("a..b/c", "a..b/c"),
        (".", "."),
        ("d" * 1024, "d" * 1024),
    ],
)
def test_safe_relative_path_accepts_and_normalises(value: str, expected: str) -> None:
    assert safe_relative_path(value, "path") == expected


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "1 to 1024"),
        ("d" * 1025, "1 to 1024"),
        ("/etc/passwd", "relative"),
        ("//etc/passwd", "relative"),
        ("..", "'..'"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/..", "'..'"),
        ("a/../b", "'..'"),  # stays inside, but a '..' component is refused on principle
        ("./../x", "'..'"),
        ("a\\..\\..\\x", "backslash"),
        ("a\x00b", "NUL"),
        ("*.txt", "glob"),
        ("a?", "glob"),
        ("[ab]", "glob"),
    ],
)
def test_safe_relative_path_refuses_naming_the_field(value: str, words: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        safe_relative_path(value, "things.path")
    assert exc.value.field == "things.path"
    assert words in exc.value.message


@pytest.mark.parametrize("value", [None, 3, b"a.txt", ["a"]])
def test_safe_relative_path_refuses_non_strings(value: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        safe_relative_path(value, "p")
    assert exc.value.field == "p"
    assert "string" in exc.value.message


def test_globs_only_when_allowed() -> None:
    assert safe_relative_path("out/*.txt", "p", allow_glob=True) == "out/*.txt"
    with pytest.raises(InvalidInput):
        safe_relative_path("../*.txt", "p", allow_glob=True)
    with pytest.raises(InvalidInput):
        safe_relative_path("/out/*.txt", "p", allow_glob=True)

"""Schemathesis over every operation of ``/openapi.json``, against a live coordinator.

Each operation gets property-based cases generated from its own description (valid and invalid
bodies, parameters and headers). Two rules hold for every answer: no server error (a 5xx is a bug,
except a 503 the API documents: "nothing can serve this now", with its error body), and every error
body has the documented shape — ``{"error": <kind>, "message": <text>[, "field": <name>]}`` on
phage's routes, OpenAI's ``{"error": {"message": …}}`` on ``/v1``. Responses are also checked
against their documented schemas where the document declares one.

``PHAGE_FUZZ_EXAMPLES`` sets the cases per operation (default 25: the suite stays within minutes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from phage.testing import CoordinatorProcess  # noqa: E402

EXAMPLES = int(os.environ.get("PHAGE_FUZZ_EXAMPLES", "25"))
JSON = "application/json"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    coord = CoordinatorProcess(tmp_path_factory.mktemp("fuzz") / "coordinator").start()
    yield coord
    coord.stop()


def _error_shape_ok(path: str, body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    if path.startswith("/v1/"):
        err = body.get("error")
        return isinstance(err, dict) and isinstance(err.get("message"), str)
    field = body.get("field")
    return (
        isinstance(body.get("error"), str)
        and isinstance(body.get("message"), str)
        and (field is None or isinstance(field, str))
    )


def _check(case: Any, live: CoordinatorProcess) -> None:
    key = f"{case.operation.method.upper()} {case.operation.path}"
    response = case.call(headers={"Authorization": f"Bearer {live.admin_key}"}, timeout=30)
    status = response.status_code
    if status >= 500:
        assert status == 503, f"{key} answered {status}: {response.text[:500]}"
    if status >= 400:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(
                f"{key} answered {status} without a JSON error body: {response.text[:300]!r}"
            ) from None
        assert _error_shape_ok(case.operation.path, body), f"{key} {status}: {body!r}"
    # and the answer matches the document: status codes, content types, body schemas. Not checked:
    # that every schema-valid body is accepted (the validators enforce what JSON Schema cannot say,
    # such as safe relative paths, and refuse with a documented 400 naming the field).
    case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])


def _fuzz(op: Any, label: str, cases: dict[str, int], live: CoordinatorProcess) -> Any:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=op.as_strategy())
    def run(case: Any) -> None:
        cases[label] += 1
        _check(case, live)

    return run


BODYLESS = {
    "POST /api/gc",
    "POST /api/feed/ticket",
    *(
        f"POST /api/nodes/{{node_id}}/{action}"
        for action in ("release", "quarantine", "approve", "reject", "drain", "undrain")
    ),
}
"""Operations that take no body: their input is the path and the query."""


def test_every_body_is_described(live: CoordinatorProcess) -> None:
    """Every operation that reads a body documents it, so the fuzzer draws bodies from a schema."""
    doc = httpx.get(live.url + "/openapi.json").json()
    undescribed = sorted(
        f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in ("post", "put", "patch") and "requestBody" not in op
    )
    assert set(undescribed) <= BODYLESS, set(undescribed) - BODYLESS
    for path in ("/api/keys/{key_id}/topup", "/api/networks", "/api/networks/{network_id}/forward"):
        content = doc["paths"][path]["post"]["requestBody"]["content"]
        assert "$ref" in content["application/json"]["schema"], path
    assert "$ref" in doc["paths"]["/v1/completions"]["post"]["requestBody"]["content"][JSON]["schema"]
    dataset = doc["paths"]["/api/datasets"]["post"]["requestBody"]["content"]
    assert dataset["application/octet-stream"]["schema"]["format"] == "binary"


def test_every_operation(live: CoordinatorProcess, tmp_path: Path) -> None:
    """Every operation in the document, EXAMPLES generated cases each; all failures reported together."""
    api = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    fuzzed = {f"{op.method.upper()} {op.path}" for op in operations}
    for must in (
        "POST /api/keys/{key_id}/topup",
        "POST /v1/completions",
        "POST /api/networks",
        "POST /api/networks/{network_id}/forward",
        "POST /api/datasets",
    ):
        assert must in fuzzed, must
    cases: dict[str, int] = {}
    failures: dict[str, str] = {}
    for op in operations:
        label = f"{op.method.upper()} {op.path}"
        cases[label] = 0
        try:
            _fuzz(op, label, cases, live)()
        except (Exception, BaseExceptionGroup) as exc:  # keep going: report every failing operation
            failures[label] = f"{type(exc).__name__}: {str(exc)[:800]}"
    summary = f"operations {len(operations)}\ncases {sum(cases.values())}\n" + "".join(
        f"  {n:4d}  {label}\n" for label, n in sorted(cases.items())
    )
    Path(os.environ.get("PHAGE_FUZZ_SUMMARY", tmp_path / "fuzz-summary.txt")).write_text(summary)
    print(summary)
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())


def test_the_document_names_things_by_what_they_are(live: CoordinatorProcess) -> None:
    """No design-document numbers ("seed 002") in what users read: the API's own description."""
    text = httpx.get(live.url + "/openapi.json").text
    assert re.search(r"seed[- _]?0\d\d", text, re.IGNORECASE) is None

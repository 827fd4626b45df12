"""The OpenAPI document, completed: request bodies, response bodies and the error shape of every route.

Several routes read their bodies themselves (a task may come as JSON, a batch or a multipart upload;
the validators name the exact field at fault), so FastAPI cannot infer those schemas. This module
adds them from the models in :mod:`phage.api` after FastAPI builds the document, and gives every
operation its documented errors: ``4XX`` (and ``503``, "nothing can serve this now") with
:class:`~phage.api.models.ErrorBody`, or OpenAI's shape on ``/v1``. The fuzzer checks live answers
against this document, so it cannot drift from what the server does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from phage.api import models as m
from phage.api import requests as rq
from phage.coordinator.settings import CoordinatorSettings

JSON = "application/json"

REQUEST_BODIES: dict[tuple[str, str], list[type[BaseModel]]] = {
    ("post", "/api/tasks"): [rq.TaskCreate, rq.TaskBatch],
    ("post", "/api/workloads/digest"): [rq.TaskCreate],
    ("post", "/api/keys"): [rq.KeyCreate],
    ("post", "/api/keys/{key_id}"): [rq.KeyUpdate],
    ("post", "/api/keys/{key_id}/topup"): [rq.KeyTopUp],
    ("post", "/api/networks"): [rq.NetworkCreate],
    ("post", "/api/networks/{network_id}/forward"): [rq.NetworkForward],
    ("post", "/v1/chat/completions"): [rq.ChatCompletionCreate],
    ("post", "/v1/completions"): [rq.CompletionCreate],
}
"""Bodies a route parses itself: the JSON it accepts, one model or any of several."""

RAW_BODIES: dict[tuple[str, str], str] = {
    ("post", "/api/datasets"): "The dataset file itself: an .npz or safetensors file holding x and y.",
}
"""Bodies that are a file's bytes, streamed to storage as they arrive (no JSON to model)."""

RESPONSE_BODIES: dict[tuple[str, str], list[type[BaseModel]]] = {
    ("post", "/api/tasks"): [m.Task, m.TaskRefList],
    ("get", "/api/tasks"): [m.TaskPage],
    ("get", "/api/tasks/{task_id}"): [m.Task],
    ("delete", "/api/tasks/{task_id}"): [m.Task],
    ("get", "/api/status"): [m.PoolStatus],
    ("get", "/api/nodes"): [m.NodeList],
    ("post", "/api/nodes/{node_id}/release"): [m.Node],
    ("post", "/api/nodes/{node_id}/quarantine"): [m.Node],
    ("post", "/api/nodes/{node_id}/approve"): [m.Node],
    ("post", "/api/nodes/{node_id}/reject"): [m.Node],
    ("post", "/api/nodes/{node_id}/drain"): [m.Node],
    ("post", "/api/nodes/{node_id}/undrain"): [m.Node],
    ("post", "/api/nodes/{node_id}"): [m.Node],
    ("delete", "/api/nodes/{node_id}"): [m.Ref],
    ("get", "/api/keys"): [m.KeyList],
    ("post", "/api/keys"): [m.NewApiKey],
    ("get", "/api/usage"): [m.UsageList],
    ("get", "/api/workloads"): [m.WorkloadList],
    ("post", "/api/workloads"): [m.WorkloadApproval],
    ("post", "/api/workloads/digest"): [m.WorkloadDigest],
    ("get", "/v1/models"): [m.ModelList],
    ("post", "/v1/chat/completions"): [m.ChatCompletion],
}
"""Answers a route builds as plain JSON: the model each success body follows."""


class _Components:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.schemas: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})

    def ref(self, model: type[BaseModel]) -> dict[str, Any]:
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in js.pop("$defs", {}).items():
            self.schemas.setdefault(name, sub)
        self.schemas[model.__name__] = js
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def one_of(self, models: list[type[BaseModel]]) -> dict[str, Any]:
        refs = [self.ref(x) for x in models]
        return refs[0] if len(refs) == 1 else {"anyOf": refs}


def complete(schema: dict[str, Any], settings: CoordinatorSettings) -> dict[str, Any]:
    """Add request bodies, response bodies and error responses to FastAPI's document."""
    comps = _Components(schema)
    paths: dict[str, dict[str, Any]] = schema.get("paths", {})
    for (method, path), models in REQUEST_BODIES.items():
        op = paths.get(path, {}).get(method)
        if op is None:
            continue
        content = {JSON: {"schema": comps.one_of(models)}}
        if path == "/api/tasks":  # a task with an uploaded workspace archive
            content["multipart/form-data"] = {
                "schema": {
                    "type": "object",
                    "properties": {
                        "task": {"type": "string", "description": "The task as JSON (TaskCreate)."},
                        "workspace": {"type": "string", "format": "binary", "description": "A .tar.gz."},
                    },
                    "required": ["task"],
                }
            }
        op["requestBody"] = {"required": True, "content": content}
    for (method, path), description in RAW_BODIES.items():
        op = paths.get(path, {}).get(method)
        if op is not None:
            binary = {"type": "string", "format": "binary", "description": description}
            content = {"application/octet-stream": {"schema": binary}}
            op["requestBody"] = {"required": True, "content": content}
    submit = paths.get("/submit", {}).get("post")
    if submit is not None:  # the sandrun-compatible upload
        submit["requestBody"] = {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "files": {"type": "string", "format": "binary", "description": "A .tar.gz."},
                            "manifest": {"type": "string", "description": "The manifest as JSON."},
                        },
                        "required": ["manifest"],
                    }
                }
            },
        }
    # the batch limit is the coordinator's own setting
    task_create = comps.schemas.get("TaskCreate", {}).get("properties", {})
    if "count" in task_create:
        task_create["count"]["maximum"] = settings.max_batch_submit
    batch = comps.schemas.get("TaskBatch", {}).get("properties", {})
    if "tasks" in batch:
        batch["tasks"]["maxItems"] = settings.max_batch_submit
    for (method, path), models in RESPONSE_BODIES.items():
        op = paths.get(path, {}).get(method)
        if op is None:
            continue
        for status, answer in op.get("responses", {}).items():
            if status.startswith("2"):
                answer["content"] = {JSON: {"schema": comps.one_of(models)}}
    phage_error = comps.ref(m.ErrorBody)
    openai_error = comps.ref(m.OpenAIErrorBody)
    for path, item in paths.items():
        error = openai_error if path.startswith("/v1/") else phage_error
        for op in item.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's default; phage answers 400 with ErrorBody instead
            responses["4XX"] = {
                "description": "Refused: the body names the field and the limit.",
                "content": {JSON: {"schema": error}},
            }
            responses["503"] = {
                "description": "Nothing can serve this now (no node has the model).",
                "content": {JSON: {"schema": error}},
            }
    return schema


def install_openapi(app: FastAPI, settings: CoordinatorSettings) -> None:
    """Serve the completed document at ``/openapi.json``."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            base = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = complete(base, settings)
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]

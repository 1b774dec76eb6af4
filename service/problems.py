"""Errors as RFC 9457 problem details (`application/problem+json`)."""
from __future__ import annotations

from typing import Any

from apiflask import HTTPError
from flask import json

PROBLEM_JSON = "application/problem+json"


def problem(status: int, detail: str, *, title: str | None = None, headers=None, **extra: Any) -> HTTPError:
    """An error to raise from a view; `extra` members are added to the body."""
    return HTTPError(status, message=title, detail=detail, headers=headers, extra_data=extra)


def render(error: HTTPError):
    """APIFlask's error processor: every error the API returns goes through here."""
    body: dict[str, Any] = {"type": "about:blank", "title": error.message, "status": error.status_code}
    detail = error.detail
    if isinstance(detail, dict) and detail:
        # A request-model validation error: {location: {field: [messages]}}.
        body["detail"] = "The request is not valid."
        body["errors"] = [
            {"field": field, "problem": message}
            for fields in detail.values()
            for field, messages in fields.items()
            for message in messages
        ]
    elif detail:
        body["detail"] = str(detail)
    else:
        body["detail"] = error.message
    body.update(error.extra_data or {})
    return json.dumps(body), error.status_code, {**(error.headers or {}), "Content-Type": PROBLEM_JSON}


#: The body of every error response, as documented in the OpenAPI document.
PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def document_errors(spec: dict) -> dict:
    """APIFlask's spec processor: error responses are problem+json, not its own error body."""
    spec.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for path in spec.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                # An error documented with a body of its own (/ready's report) keeps it.
                if str(status)[0] in "45" and not _own_body(response):
                    response["content"] = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return spec


def _own_body(response: dict) -> bool:
    content = response.get("content") or {}
    schema = (content.get("application/json") or {}).get("schema") or {}
    return bool(content) and "$ref" not in schema

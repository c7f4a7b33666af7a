"""Maps every error to an RFC 9457 ``application/problem+json`` response, once, for the app."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.routing import Match

from relay.errors import StagecastError

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"
TYPE_BASE = "https://stagecast.dev/problems/"


class ProblemError(BaseModel):
    """One way a request failed its schema (422 ``validation`` problems)."""

    loc: list[str]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error answer (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[ProblemError] | None = None


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_WHEN = {
    307: "Served by another node: follow Location (a WHEP client re-POSTs its offer there)",
    400: "Malformed request: SDP, trickle fragment, query or body",
    401: "No valid credential (token or operator key)",
    403: "The credential is for another room, role or session",
    404: "No such room, session, stream or file",
    409: "Conflict: not live yet (retry after Retry-After), full stage, exists already, or the"
    " session's connection has ended",
    412: "If-Match does not match the session's ETag",
    413: "Request body too large",
    415: "Wrong Content-Type",
    422: "Well-formed but not acceptable: unsupported offer, ICE restart, schema mismatch",
    428: "If-Match is required",
    429: "Too many session requests from this address (retry after Retry-After)",
    503: "Overloaded, full, draining or upstream unreachable (retry after Retry-After)",
}
_HEADERS: dict[int, dict[str, Any]] = {
    307: {"Location": {"description": "Where to send the request", "schema": {"type": "string"}}},
    401: {"WWW-Authenticate": {"description": "Bearer realm", "schema": {"type": "string"}}},
}
for _status in (409, 429, 503):
    _HEADERS[_status] = {
        "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
    }


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error answers a route gives, each a Problem body."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "description": _WHEN.get(status) or HTTPStatus(status).phrase,
            "content": {PROBLEM_TYPE: {"schema": _PROBLEM_REF}},
        }
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        out[status] = entry
    return out


# What the WHIP/WHEP resources answer besides success (RFC 9725 section 4; the WHEP draft).
# 413 and 429 come from relay.http.guards in front of the routes.
SESSION_POST_ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
WHEP_POST_ERRORS = problem_responses(307, 400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
WHEP_HEAD_ERRORS = problem_responses(307, 400, 401, 403, 404, 409, 422)
SESSION_DELETE_ERRORS = problem_responses(401, 403, 404, 422)
SESSION_PATCH_ERRORS = problem_responses(400, 401, 403, 404, 409, 412, 413, 415, 422, 428)


def _describe_problems(schema: dict[str, Any]) -> None:
    """Every error (and redirect) answer in the document as ``application/problem+json`` with
    a Problem body: FastAPI writes its own 422 schema, and an empty ``application/json`` beside
    any content type a route declares."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ProblemError, Problem):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        model_schema.pop("$defs", None)
        components[model.__name__] = model_schema
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content") or {}
                if code.isdigit() and int(code) >= 300:
                    response["content"] = {PROBLEM_TYPE: {"schema": _PROBLEM_REF}}
                    if response.get("description") == "Validation Error":
                        response["description"] = _WHEN[422]
                elif len(content) > 1 and content.get("application/json") == {"schema": {}}:
                    del content["application/json"]
    if "HTTPValidationError" not in json.dumps(schema["paths"]):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": TYPE_BASE + slug, "title": title, "status": status}
    body["detail"] = detail
    if instance:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    async def on_stagecast(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StagecastError)
        return problem(
            exc.status,
            exc.title,
            exc.detail,
            slug=exc.type_slug,
            instance=request.url.path,
            headers=exc.headers,
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
        return problem(
            exc.status_code,
            _reason(exc.status_code),
            str(exc.detail),
            slug=f"http-{exc.status_code}",
            instance=request.url.path,
            headers=headers,
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return problem(
            422,
            "Unprocessable content",
            "the request does not match the schema",
            slug="validation",
            instance=request.url.path,
            extra={"errors": errors},
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500,
            "Internal error",
            "unexpected server error",
            slug="internal",
            instance=request.url.path,
        )

    app.add_exception_handler(StagecastError, on_stagecast)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _describe_problems(generate())  # generate() caches the document it returns
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method some route of the app takes at this path (RFC 9110 15.5.6: a 405 lists
    them all; Starlette lists only those of the first route whose path matched)."""
    found = []
    for method in METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            found.append(method)
    return ", ".join(found)

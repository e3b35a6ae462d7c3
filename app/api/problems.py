"""RFC 9457 problem+json for every error, with the stable `code` of API.md.

Rendering and documenting live together, so the OpenAPI says what is sent: every
error response of every operation is `application/problem+json` with the
`Problem` schema, its `status`, and the `code`s the operation can answer."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import AppError, RetryLater, ServiceUnavailable, Unauthorized
from app.redact import redact_paths

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
DATABASE_RETRY_AFTER_SECONDS = 5

_HTTP_CODES = {
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


class FieldProblem(BaseModel):
    field: str = Field(description="Where, e.g. `body.disks.0.name` or `query.limit`.")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details; `code` is the stable machine string."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldProblem] | None = Field(
        default=None, description="422: each offending field."
    )
    libvirt_code: int | None = Field(default=None, description="libvirt's own error code.")


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON

    def render(self, content: Any) -> bytes:
        # ASCII escapes: a field name the client sent may hold a lone surrogate,
        # which UTF-8 cannot encode.
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": f"urn:vmbackup:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return ProblemResponse(body, status_code=status, headers=headers)


def _field_path(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location)


async def _app_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, AppError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
    if isinstance(error, RetryLater) and error.retry_after is not None:
        headers = {"Retry-After": str(error.retry_after)}
    detail = error.detail
    if error.status >= 500:
        # A server-side failure may quote a host path (libvirt, qemu-img): logged
        # whole, sent redacted.
        log.warning("%s: %s", error.code, detail)
        detail = redact_paths(detail)
    return problem(error.status, error.code, error.title, detail, headers, **error.extra)


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    fields = [
        {"field": _field_path(item["loc"]), "message": item["msg"]} for item in error.errors()
    ]
    detail = "; ".join(f"{item['field']}: {item['message']}" for item in fields)
    return problem(422, "invalid-request", "Invalid request", detail, errors=fields)


async def _http_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code, title = _HTTP_CODES.get(error.status_code, ("http-error", "HTTP error"))
    return problem(error.status_code, code, title, str(error.detail), error.headers)


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    log.error("database unavailable: %s", error)
    unavailable = ServiceUnavailable(
        "the database does not answer; retry later (running backups go on)",
        retry_after=DATABASE_RETRY_AFTER_SECONDS,
    )
    return await _app_error(request, unavailable)


async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=error)
    return problem(500, "internal-error", "Internal error", "an unexpected error occurred")


def install(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # The database refusing connections or timing out: the caller may retry.
    for database_down in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(database_down, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


def problem_responses(*causes: int | type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the problems a route answers. An `AppError` class
    documents its status and `code`; a bare status documents the status only.
    `app.api.openapi` adds the problems every route shares."""
    responses: dict[int | str, dict[str, Any]] = {}
    for cause in causes:
        status = cause if isinstance(cause, int) else cause.status
        entry = responses.setdefault(
            status, {"description": "Problem", "content": {PROBLEM_JSON: {}}}
        )
        if not isinstance(cause, int):
            codes: list[str] = entry.setdefault(CODES_KEY, [])
            if cause.code not in codes:
                codes.append(cause.code)
    return responses


# Where `problem_responses` keeps a response's codes for `app.api.openapi`.
CODES_KEY = "x-problem-codes"

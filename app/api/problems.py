"""RFC 9457 problem+json for every error, with the stable `code` of API.md."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.db.session import DATABASE_UNAVAILABLE
from app.errors import AppError, RetryLater, Unauthorized

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
DATABASE_RETRY_AFTER_SECONDS = 5

_HTTP_CODES = {
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


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
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_path(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location)


async def _app_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, AppError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
    if isinstance(error, RetryLater) and error.retry_after is not None:
        headers = {"Retry-After": str(error.retry_after)}
    if error.status >= 500:
        log.warning("%s: %s", error.code, error.detail)
    return problem(error.status, error.code, error.title, error.detail, headers, **error.extra)


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


async def _database_unavailable(_request: Request, error: Exception) -> JSONResponse:
    # Logged in full; the client learns only that it may retry.
    log.warning("database unavailable: %s", error)
    detail = "the database is unavailable; retry shortly (running backups go on)"
    headers = {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}
    return problem(503, "service-unavailable", "Service unavailable", detail, headers)


async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=error)
    return problem(500, "internal-error", "Internal error", "an unexpected error occurred")


def install(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the problems a route can answer."""
    return {
        status: {"description": "Problem", "content": {PROBLEM_JSON: {}}} for status in statuses
    }

"""Routes that check who is asking before they read what is asked.

FastAPI reads and parses a route's body before it solves the route's
dependencies, so without this a client with no token would learn from a 422 how
its body parsed, and cost the service the parsing. `AuthFirstRoute` authenticates
and authorizes first, then reads the body (capped by `app.api.middleware.BodyLimit`)
and refuses one that is not UTF-8 JSON as a problem, before FastAPI sees it."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from app.api.auth import authenticate, authorize
from app.api.deps import required_scope
from app.api.request_context import bind_path_ids
from app.api.state import AppState
from app.errors import InvalidRequest

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class AuthFirstRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        scope = required_scope(self.dependant)
        reads_body = self.body_field is not None

        async def auth_first(request: Request) -> Response:
            bind_path_ids(request.path_params)
            if scope is not None:
                state: AppState = request.app.state.vmbackup
                authorize(authenticate(request, state.settings), scope)
            if reads_body:
                await _check_json(request)
            return await handler(request)

        return auth_first


def _json_content(request: Request) -> bool:
    # FastAPI parses a body as JSON when it is declared so, or not declared at all.
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type in ("", "application/json") or content_type.endswith("+json")


async def _check_json(request: Request) -> None:
    body = await request.body()
    if not body or not _json_content(request):
        return
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_body("the body is not UTF-8") from None
    try:
        json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError) as error:
        raise _invalid_body(f"the body is not JSON: {error}") from None


def _not_json(constant: str) -> None:
    # Python reads NaN and Infinity; JSON (RFC 8259) has neither.
    raise ValueError(f"{constant} is not a JSON value")


def _invalid_body(message: str) -> InvalidRequest:
    return InvalidRequest(message, errors=[{"field": "body", "message": message}])

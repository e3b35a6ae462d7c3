"""The request id and the access line of every request.

A client's `X-Request-ID` is kept when it is a plain token (letters, digits and
`.-_:`, up to 128), else one is made; either way it is returned in the answer's
`X-Request-ID` and named on every log line the request causes. The route binds
the ids of its path (`bind_path_ids`), so those lines name the backup, host or
domain asked about, and the access line that ends the request does too."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bind_contextvars, clear_contextvars, get_contextvars

HEADER = "X-Request-ID"
CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Path parameters -> the log context keys they fill.
PATH_IDS = {
    "host": "host",
    "domain": "domain",
    "backup_id": "backup_id",
    "restore_id": "restore_id",
    "policy_id": "policy",
    "name": "checkpoint",
}
# Polled by probes and scrapers every few seconds: their lines at debug.
PROBE_PATHS = {"/livez", "/readyz", "/metrics"}

access = logging.getLogger("app.access")


def request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = bytes(value).decode("latin-1")
            if CLIENT_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex


def bind_path_ids(path_params: Mapping[str, object]) -> None:
    bind_contextvars(
        **{key: str(path_params[param]) for param, key in PATH_IDS.items() if param in path_params}
    )


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        outer = get_contextvars()  # an in-process caller's own, restored after
        rid = request_id(scope)
        bind_contextvars(request_id=rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _log_access(scope, status, time.perf_counter() - started)
            clear_contextvars()
            bind_contextvars(**outer)


def _log_access(scope: Scope, status: int, seconds: float) -> None:
    path = scope["path"]
    bind_path_ids(scope.get("path_params", {}))  # routed: a route that binds none too
    level = logging.DEBUG if path in PROBE_PATHS and status < 500 else logging.INFO
    access.log(
        level,
        "%s %s %d",
        scope["method"],
        path,
        status,
        extra={
            "method": scope["method"],
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
        },
    )

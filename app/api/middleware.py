"""Pure ASGI middleware that refuses a request before any route sees it."""

from __future__ import annotations

import ipaddress

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import is_loopback_client
from app.api.problems import problem
from app.errors import (
    AppError,
    Forbidden,
    MisdirectedRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from app.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LoopbackOnly:
    """With no tokens configured every request is anonymous admin, so only the
    machine itself may ask: checked against the socket peer of each request,
    whatever address the server was told to bind."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.settings.tokens or is_loopback_client(scope["client"]):
            await self.app(scope, receive, send)
            return
        error = Forbidden("no tokens are configured: only loopback clients are served")
        await _refuse(error, scope, receive, send)


class BrowserGuard:
    """What a web page in the operator's browser could make of the API (DESIGN.md,
    "Requests from browsers"):
    - DNS rebinding: a page whose name re-resolves to 127.0.0.1 is same-origin with
      a tokenless service, so such a service answers only to loopback names and
      `ALLOWED_HOSTS` (421 otherwise);
    - forged requests: a form or `fetch` from another site reaches the API without
      a preflight, so a request that changes something and comes from another
      origin is 403, tokens or not;
    - simple bodies: browsers send form and text bodies across sites without
      asking first, so a body that is not JSON is 415, whatever the route."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = self._refusal(scope) if scope["type"] == "http" else None
        if error is None:
            await self.app(scope, receive, send)
        else:
            await _refuse(error, scope, receive, send)

    def _refusal(self, scope: Scope) -> AppError | None:
        headers = Headers(scope=scope)
        host = headers.get("host")
        if not self.settings.tokens and host is not None and not self._own_name(host):
            return MisdirectedRequest(
                f"this service does not answer to {_host_name(host)!r}: with no tokens "
                "configured it answers to loopback names and VMBACKUP_ALLOWED_HOSTS only"
            )
        if scope["method"] in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"{scope['scheme']}://{host}".lower():
            return Forbidden(f"a request from another origin ({origin}) may not change anything")
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            return Forbidden("a request from another site may not change anything")
        if not _json_body(headers):
            return UnsupportedMediaType("a request body must be application/json")
        return None

    def _own_name(self, host: str) -> bool:
        name = _host_name(host)
        return name in self.settings.allowed_hosts or _is_loopback_name(name)


def _host_name(host: str) -> str:
    """The name of a `Host` header, without its port: `[::1]:8080` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def _is_loopback_name(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _json_body(headers: Headers) -> bool:
    """A JSON content type, or no body at all (a bodiless POST such as /cancel)."""
    content_type = headers.get("content-type")
    if content_type is None:
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        return not has_body
    media_type = content_type.split(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuses a body over the cap: a declared Content-Length at once, a chunked
    one as soon as the chunks add up past it, before anything parses it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = PayloadTooLarge(f"the body is larger than {self.max_bytes} bytes")
        if _declared_length(scope) > self.max_bytes:
            await _refuse(error, scope, receive, send)
            return
        received = 0
        exceeded = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app makes of the interrupted read is replaced by the 413.
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await _refuse(error, scope, receive, send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return 0


async def _refuse(error: AppError, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem(error.status, error.code, error.title, error.detail)
    await response(scope, receive, send)

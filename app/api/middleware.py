"""Pure ASGI middleware that refuses a request before any route sees it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import is_loopback_client
from app.api.problems import problem
from app.errors import Forbidden, PayloadTooLarge
from app.settings import Settings


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


async def _refuse(
    error: Forbidden | PayloadTooLarge, scope: Scope, receive: Receive, send: Send
) -> None:
    response = problem(error.status, error.code, error.title, error.detail)
    await response(scope, receive, send)

"""Server-sent events of backups. Everything a client sends (`Last-Event-ID`,
filters) is checked, and a stream slot taken, before the stream starts: once the
headers are sent, an error can only cut the connection."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.deps import ReadDep, SessionDep, StateDep
from app.api.problems import problem_responses
from app.api.state import AppState
from app.backups import events, service
from app.backups.service import BackupFilters
from app.errors import BackupNotFound, InvalidRequest, LimitReached

router = APIRouter(tags=["events"])
EVENT_STREAM = "text/event-stream"
# ASCII digits only: str.isdigit() also takes '²' and other digits int() refuses.
EVENT_ID_PATTERN = r"^[0-9]{1,19}$"
MAX_EVENT_ID = 2**63 - 1  # ids are signed 64-bit on both backends
LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        pattern=EVENT_ID_PATTERN,
        description="The id of the last event received: the stream resumes after it. "
        f"Decimal ASCII digits, at most {MAX_EVENT_ID}; anything else is 422.",
    ),
]
_SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Server-sent events", "content": {EVENT_STREAM: {}}}
}
_LIMIT = (
    " At most `VMBACKUP_MAX_STREAMS_PER_TOKEN` streams per token are open at once (per "
    "service process): one more is 429 `limit-reached` with `Retry-After`; a stream frees "
    "its slot when it ends or its client disconnects."
)


async def _freeing(
    body: AsyncGenerator[str, None], free: Callable[[], None]
) -> AsyncGenerator[str, None]:
    try:
        async for chunk in body:
            yield chunk
    finally:
        free()  # before the end of the body is sent: the client may open another at once


class EventStream(StreamingResponse):
    """An SSE response that frees its stream slot however it ends: after the last
    event, or when the client disconnects (Starlette then cancels the sending)."""

    def __init__(self, body: AsyncGenerator[str, None], free: Callable[[], None]) -> None:
        # No proxy buffering: each event must reach the dashboard when it happens.
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        self._bodies = (_freeing(body, free), body)
        super().__init__(self._bodies[0], media_type=EVENT_STREAM, headers=headers)
        self._free = free

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._free()  # a disconnect may leave the body unfinished
            for body in self._bodies:  # rather than leave them to the garbage collector
                await body.aclose()


def _after(last_event_id: str | None) -> int | None:
    if last_event_id is None:
        return None
    if not re.fullmatch(EVENT_ID_PATTERN, last_event_id) or int(last_event_id) > MAX_EVENT_ID:
        raise InvalidRequest(
            "Last-Event-ID: an event id this service sent",
            errors=[{"field": "header.Last-Event-ID", "message": "not an event id"}],
        )
    return int(last_event_id)


def _stream(state: AppState, holder: str, feed: events.FeedFilter, after: int) -> EventStream:
    """The last step before answering, so nothing can fail with the slot taken."""
    free = state.streams.take(holder, state.settings.max_streams_per_token)
    return EventStream(events.stream(state.database, feed, after), free)


@router.get(
    "/v1/backups/{backup_id}/events",
    response_class=StreamingResponse,
    responses={**_SSE_RESPONSE, **problem_responses(BackupNotFound, InvalidRequest, LimitReached)},
    description="Server-sent events: one per change of status (`event: status`) or progress "
    "(`event: progress`), from the backup's first, ending after the terminal one. Each `data` "
    "is JSON `{id, backup_id, host, domain, status, previous_status, progress, message, at}`; "
    "`Last-Event-ID` resumes after that event." + _LIMIT,
    summary="Follow one backup's events (SSE)",
)
async def backup_events(
    backup_id: uuid.UUID,
    principal: ReadDep,
    session: SessionDep,
    state: StateDep,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    after = _after(last_event_id) or 0
    await service.get_backup(session, backup_id)  # 404 before the stream starts
    return _stream(state, principal.key, events.FeedFilter(backup_id=backup_id), after)


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses={**_SSE_RESPONSE, **problem_responses(InvalidRequest, LimitReached)},
    description="Server-sent events of every backup (dashboards), optionally of one host or "
    "one domain (name or UUID), from now on, or after `Last-Event-ID`. Never ends; a comment "
    "line every 15 s keeps idle connections open." + _LIMIT,
    summary="Follow all backup events (SSE)",
)
async def all_events(
    principal: ReadDep,
    state: StateDep,
    host: str | None = None,
    domain: str | None = None,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    after = _after(last_event_id)
    if after is None:
        after = await events.latest_id(state.database)
    feed = events.FeedFilter(backups=BackupFilters(host=host, domain=domain))
    return _stream(state, principal.key, feed, after)

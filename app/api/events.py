from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse

from app.api.deps import ReadDep, SessionDep, StateDep
from app.api.problems import problem_responses
from app.backups import events, service
from app.backups.service import BackupFilters
from app.errors import InvalidRequest

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


def _after(last_event_id: str | None) -> int | None:
    """The event id to resume after, checked before the stream starts: once the
    headers are sent, an error can only cut the connection."""
    if last_event_id is None:
        return None
    if not re.fullmatch(EVENT_ID_PATTERN, last_event_id) or int(last_event_id) > MAX_EVENT_ID:
        raise InvalidRequest(
            "Last-Event-ID: an event id this service sent",
            errors=[{"field": "header.Last-Event-ID", "message": "not an event id"}],
        )
    return int(last_event_id)


def _streaming(body: AsyncIterator[str]) -> StreamingResponse:
    # No proxy buffering: each event must reach the dashboard when it happens.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type=EVENT_STREAM, headers=headers)


@router.get(
    "/v1/backups/{backup_id}/events",
    response_class=StreamingResponse,
    responses={**_SSE_RESPONSE, **problem_responses(401, 403, 404, 422)},
    description="Server-sent events: one per change of status (`event: status`) or progress "
    "(`event: progress`), from the backup's first, ending after the terminal one. Each `data` "
    "is JSON `{id, backup_id, host, domain, status, previous_status, progress, message, at}`; "
    "`Last-Event-ID` resumes after that event.",
)
async def backup_events(
    backup_id: uuid.UUID,
    _: ReadDep,
    session: SessionDep,
    state: StateDep,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    after = _after(last_event_id) or 0
    await service.get_backup(session, backup_id)  # 404 before the stream starts
    feed = events.FeedFilter(backup_id=backup_id)
    return _streaming(events.stream(state.database, feed, after))


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses={**_SSE_RESPONSE, **problem_responses(401, 403, 422)},
    description="Server-sent events of every backup (dashboards), optionally of one host or "
    "one domain (name or UUID), from now on, or after `Last-Event-ID`. Never ends; a comment "
    "line every 15 s keeps idle connections open.",
)
async def all_events(
    _: ReadDep,
    state: StateDep,
    host: str | None = None,
    domain: str | None = None,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    after = _after(last_event_id)
    if after is None:
        after = await events.latest_id(state.database)
    feed = events.FeedFilter(backups=BackupFilters(host=host, domain=domain))
    return _streaming(events.stream(state.database, feed, after))

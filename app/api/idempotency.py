"""`Idempotency-Key`: the same key and body within 24 h replays the first
response; the same key with another body is 422 `idempotency-conflict`.

The key is reserved before the work is done: a row committed on its own, whose
primary key lets exactly one request hold it. The response is then written into
that row in the request's own transaction, so the key's answer and what the
request created are committed together. A concurrent request with the same key
never does the work: it waits for the first one's answer, and replays it. Keys
are namespaced by the token's digest (token names need not be unique)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import anyio
from fastapi import Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import ColumnElement, delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.api.auth import Principal
from app.db.base import utcnow
from app.db.models import IdempotencyKey
from app.errors import IdempotencyConflict, IdempotencyInProgress

KEEP_FOR = timedelta(hours=24)
WAIT_SECONDS = 30.0  # for the first request's answer, then 409
# A reservation this old was left by a process that died mid-request: taken over.
# Generous, since taking over a live one would do its work twice.
ABANDONED_AFTER = timedelta(minutes=10)
IN_PROGRESS_RETRY_AFTER_SECONDS = 2

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="The same key and body within 24 h returns the first response again "
        "(same status, body and `Location`); the same key with another body is 422 "
        "`idempotency-conflict`. The work is done once: a request sent while the first one "
        f"with its key is still in progress waits for that answer and returns it, or after "
        f"{WAIT_SECONDS:.0f} s answers 409 `idempotency-in-progress` with `Retry-After`. "
        "A request that fails is not remembered: sending it again tries again. Keys are "
        "per token.",
    ),
]


def fingerprint(method: str, path: str, body: BaseModel | None) -> str:
    payload = {
        "method": method,
        "path": path,
        "body": None if body is None else body.model_dump(mode="json", exclude_unset=True),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Reservation:
    """This request holds the key: the row of `namespace` and `key` made at `at`."""

    namespace: str
    key: str
    at: datetime

    def row(self) -> ColumnElement[bool]:
        return (
            (IdempotencyKey.principal == self.namespace)
            & (IdempotencyKey.key == self.key)
            & (IdempotencyKey.created_at == self.at)
        )


@asynccontextmanager
async def _own_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """Apart from the request's transaction: others must see a reservation at once.
    Shielded, so a cancelled request still ends it (and frees its connection)."""
    with anyio.CancelScope(shield=True):
        async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
            yield session


async def _read(engine: AsyncEngine, namespace: str, key: str) -> IdempotencyKey | None:
    async with _own_transaction(engine) as session:
        return await session.get(IdempotencyKey, (namespace, key))


async def _insert(
    engine: AsyncEngine, namespace: str, key: str, request_hash: str
) -> Reservation | None:
    reservation = Reservation(namespace, key, utcnow())
    row = IdempotencyKey(
        principal=namespace, key=key, request_hash=request_hash, created_at=reservation.at
    )
    try:
        async with _own_transaction(engine) as session:
            session.add(row)
    except IntegrityError:  # another request reserved it first
        return None
    return reservation


async def _take_over(engine: AsyncEngine, row: IdempotencyKey) -> Reservation | None:
    old = Reservation(row.principal, row.key, row.created_at)
    new = Reservation(row.principal, row.key, utcnow())
    async with _own_transaction(engine) as session:
        result = await session.execute(
            update(IdempotencyKey)
            .where(old.row(), IdempotencyKey.status_code.is_(None))
            .values(created_at=new.at)
            .returning(IdempotencyKey.key)
        )
        return new if result.first() is not None else None


async def _release(engine: AsyncEngine, reservation: Reservation) -> None:
    async with _own_transaction(engine) as session:
        await session.execute(delete(IdempotencyKey).where(reservation.row()))


def _replay(row: IdempotencyKey) -> JSONResponse:
    headers = {"Location": row.location} if row.location else None
    assert row.status_code is not None
    return JSONResponse(row.response_body, status_code=row.status_code, headers=headers)


async def _reserve(
    engine: AsyncEngine, namespace: str, key: str, request_hash: str
) -> Reservation | JSONResponse:
    """The key for this request, or the first request's response to replay."""
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + WAIT_SECONDS, 0.02
    while True:
        row = await _read(engine, namespace, key)
        now = utcnow()
        if row is None:
            reservation = await _insert(engine, namespace, key, request_hash)
            if reservation is not None:
                return reservation
        elif row.status_code is not None and row.created_at < now - KEEP_FOR:
            await _release(engine, Reservation(row.principal, row.key, row.created_at))
        elif row.request_hash != request_hash:
            raise IdempotencyConflict(f"Idempotency-Key {key!r} was used with another request")
        elif row.status_code is not None:
            return _replay(row)
        elif row.created_at < now - ABANDONED_AFTER:
            taken = await _take_over(engine, row)
            if taken is not None:
                return taken
        else:
            await asyncio.sleep(pause)  # other replicas' answers are only seen by looking
            pause = min(pause * 2, 0.5)
        if loop.time() >= deadline:
            raise IdempotencyInProgress(
                f"a request with Idempotency-Key {key!r} is still in progress: retry to get "
                "its answer",
                retry_after=IN_PROGRESS_RETRY_AFTER_SECONDS,
            )


async def _answer(session: AsyncSession, reservation: Reservation, response: JSONResponse) -> None:
    """The response, into the reservation, in the request's transaction."""
    result = await session.execute(
        update(IdempotencyKey)
        .where(reservation.row(), IdempotencyKey.status_code.is_(None))
        .values(
            status_code=response.status_code,
            response_body=json.loads(bytes(response.body)),
            location=response.headers.get("location"),
        )
        .returning(IdempotencyKey.key)
    )
    if result.first() is None:  # taken over as abandoned: the work is rolled back
        raise IdempotencyInProgress(
            f"the request with Idempotency-Key {reservation.key!r} took too long and was "
            "taken over by another: retry to get its answer",
            retry_after=IN_PROGRESS_RETRY_AFTER_SECONDS,
        )


def _engine(session: AsyncSession) -> AsyncEngine:
    engine = session.bind
    assert isinstance(engine, AsyncEngine), "sessions are bound to the engine"
    return engine


async def respond_once(
    session: AsyncSession,
    request: Request,
    body: BaseModel | None,
    *,
    principal: Principal,
    key: str | None,
    make: Callable[[], Awaitable[JSONResponse]],
) -> JSONResponse:
    """`make()` the response, or replay the one first made with this key for
    the same request (method, path and body)."""
    if not key:
        return await make()
    engine = _engine(session)
    request_hash = fingerprint(request.method, request.url.path, body)
    reserved = await _reserve(engine, principal.key, key, request_hash)
    if isinstance(reserved, JSONResponse):
        return reserved
    try:
        response = await make()
        await _answer(session, reserved, response)
    except BaseException:
        # Nothing was made: free the key. The request's own transaction is given up
        # first, as the error would anyway: on SQLite it may hold the one write lock
        # the release needs (seen as a 503 "database is locked" while fuzzing).
        await session.rollback()
        await _release(engine, reserved)
        raise
    return response

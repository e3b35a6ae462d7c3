"""`Idempotency-Key`: the same key and body within 24 h replays the first
response; the same key with another body is 422 `idempotency-conflict`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.models import IdempotencyKey
from app.errors import IdempotencyConflict

KEEP_FOR = timedelta(hours=24)
IdempotencyKeyHeader = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]


def fingerprint(method: str, path: str, body: BaseModel | None) -> str:
    payload = {
        "method": method,
        "path": path,
        "body": None if body is None else body.model_dump(mode="json", exclude_unset=True),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


async def replay(
    session: AsyncSession, principal: str, key: str, request_hash: str
) -> JSONResponse | None:
    row = await session.get(IdempotencyKey, (principal, key))
    if row is None:
        return None
    if row.created_at < utcnow() - KEEP_FOR:
        await session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.principal == principal, IdempotencyKey.key == key
            )
        )
        return None
    if row.request_hash != request_hash:
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was used with another request")
    headers = {"Location": row.location} if row.location else None
    return JSONResponse(row.response_body, status_code=row.status_code, headers=headers)


async def remember(
    session: AsyncSession,
    *,
    principal: str,
    key: str,
    request_hash: str,
    status_code: int,
    body: dict[str, Any],
    location: str | None,
) -> None:
    session.add(
        IdempotencyKey(
            principal=principal,
            key=key,
            request_hash=request_hash,
            status_code=status_code,
            response_body=body,
            location=location,
        )
    )
    try:
        await session.flush()
    except IntegrityError as error:
        raise IdempotencyConflict(
            f"a request with Idempotency-Key {key!r} is being processed: retry it"
        ) from error


async def respond_once(
    session: AsyncSession,
    *,
    principal: str,
    key: str | None,
    request_hash: str,
    make: Callable[[], Awaitable[JSONResponse]],
) -> JSONResponse:
    """`make()` the response, or replay the one first made with this key; the
    key and what it created are committed in one transaction."""
    if key:
        replayed = await replay(session, principal, key, request_hash)
        if replayed is not None:
            return replayed
    response = await make()
    if key:
        await remember(
            session,
            principal=principal,
            key=key,
            request_hash=request_hash,
            status_code=response.status_code,
            body=json.loads(bytes(response.body)),
            location=response.headers.get("location"),
        )
    return response

"""Opaque keyset cursors over (created_at, id): stable under concurrent inserts.

A cursor is the last row's key, JSON in URL-safe base64. The client holds it,
so anything that does not decode to exactly that (a timestamp with its zone,
and a UUID) is refused with a 422 `InvalidRequest`, never a 500 later."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

from app.errors import InvalidRequest


def encode(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _not_a_cursor() -> InvalidRequest:
    return InvalidRequest(
        "cursor: not a cursor this service gave out",
        errors=[{"field": "query.cursor", "message": "not a cursor"}],
    )


def decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, RecursionError) as error:  # bad base64, UTF-8, JSON
        raise _not_a_cursor() from error
    match decoded:
        case [str() as created_at, str() as row_id]:
            try:
                position = datetime.fromisoformat(created_at), uuid.UUID(row_id)
            except ValueError as error:
                raise _not_a_cursor() from error
            if position[0].tzinfo is None:  # cannot be compared with stored times
                raise _not_a_cursor()
            return position
        case _:
            raise _not_a_cursor()

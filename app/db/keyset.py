"""Opaque keyset cursors over (created_at, id): stable under concurrent inserts.

A cursor is the last row's key, JSON in URL-safe base64. Anything that does
not decode to exactly that (a timestamp with its zone, and a UUID) is refused
with `InvalidRequest`, never a 500."""

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


def decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    refused = InvalidRequest("cursor: not a cursor this service gave out")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError) as error:
        raise refused from error
    if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)):
        raise refused
    try:
        created_at, row_id = datetime.fromisoformat(key[0]), uuid.UUID(key[1])
    except ValueError as error:
        raise refused from error
    if created_at.tzinfo is None:
        raise refused
    return created_at, row_id

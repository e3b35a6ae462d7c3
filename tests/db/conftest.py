"""What the database tests share: an open `Database` on the test's database
(SQLite and PostgreSQL), and a queued backup row to move about."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from app import transitions
from app.db.models import Backup
from app.db.session import Database


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


async def queued_backup(database: Database) -> uuid.UUID:
    """A push backup of a made-up domain, `queued` with its event, as the API leaves it."""
    backup = Backup(
        id=uuid.uuid4(),
        host="local",
        domain_uuid=str(uuid.uuid4()),
        domain_name="vm1",
        mode="push",
        kind="full",
        created_at=datetime.now(UTC),
    )
    async with database.session_scope() as session:
        transitions.queue_backup(session, backup)
    return backup.id

"""Is the database there? Asked once by `vmbackup serve | migrate` before anything else,
so that a wrong host, port, password or path ends in one line rather than a traceback
from deep inside Alembic or the app's lifespan."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from app.db.session import make_engine
from app.db.urls import display_url

CONNECT_TIMEOUT_SECONDS = 10


class DatabaseUnreachable(Exception):
    """The database did not answer; the text names it (no password) and says why."""


def _probe_engine(url: str) -> AsyncEngine:
    if make_url(url).get_backend_name() == "sqlite":
        return make_engine(url)  # creates the file's directory, as the service would
    # Without a connect timeout a host that drops packets holds the start for minutes.
    return create_async_engine(
        url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    )


async def _ping(url: str) -> None:
    engine = _probe_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


def first_line(error: BaseException) -> str:
    cause = error.orig if isinstance(error, DBAPIError) else error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


def ensure_reachable(url: str) -> None:
    """Connect once and run `SELECT 1`; raises DatabaseUnreachable with the reason."""
    try:
        asyncio.run(_ping(url))
    except (DBAPIError, OSError) as error:
        raise DatabaseUnreachable(f"{display_url(url)}: {first_line(error)}") from error

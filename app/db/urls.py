"""Database URLs as people write them, mapped to the async drivers the service runs on.

`sqlite:///relative/path`, `sqlite:////abs/path` and `postgresql://user@host/db` (or
`postgres://`, as Heroku-style tools write it) are what operators copy from other tools;
SQLAlchemy's asyncio extension needs the driver named (`sqlite+aiosqlite`,
`postgresql+psycopg`), so the plain forms are rewritten here, once, at settings time.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

# scheme as written -> the async driver the service uses for it
ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
EXPECTED = "sqlite:////absolute/path.db or postgresql://user:password@host:5432/database"


class UnsupportedDatabaseUrl(ValueError):
    """A URL the service cannot use; its text never contains the password."""


def async_database_url(url: str) -> str:
    """The URL with its scheme mapped to the async driver; raises UnsupportedDatabaseUrl."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    driver = ASYNC_DRIVERS.get(scheme.lower())
    if driver is None:
        what = f"scheme {scheme!r} is not supported" if scheme else "not a URL"
        raise UnsupportedDatabaseUrl(f"{what}: use {EXPECTED}")
    # Swap the scheme textually: SQLAlchemy's parser would reject `postgres://`.
    mapped = driver + url[len(scheme) :]
    try:
        parsed = make_url(mapped)
    except ArgumentError:
        raise UnsupportedDatabaseUrl(f"not a database URL: use {EXPECTED}") from None
    _check(parsed)
    return mapped


def _check(parsed: URL) -> None:
    if parsed.get_backend_name() == "sqlite":
        # `sqlite://` alone is an in-memory database: each connection would see its own.
        if not parsed.database or parsed.database == ":memory:":
            raise UnsupportedDatabaseUrl(f"SQLite needs a file path: use {EXPECTED}")
    elif not parsed.database:
        raise UnsupportedDatabaseUrl(f"PostgreSQL needs a database name: use {EXPECTED}")


def display_url(url: str) -> str:
    """The URL for messages and logs, its password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("://", 1)[0] + "://..."

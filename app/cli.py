"""`vmbackup serve | migrate | orphans`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import ValidationError

from app import logs
from app.settings import Settings

if TYPE_CHECKING:
    from app.orphans import Orphan

log = logging.getLogger("vmbackup")


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = "; ".join(f"{_variable(e['loc'])}: {e['msg']}" for e in error.errors())
        raise SystemExit(f"vmbackup: invalid settings: {problems}") from None
    except ValueError as error:  # e.g. VMBACKUP_TOKENS that is not JSON
        raise SystemExit(f"vmbackup: invalid settings: {error}") from None


def _variable(location: tuple[int | str, ...]) -> str:
    """The environment variable a settings error is about."""
    name = "_".join(str(part) for part in location).upper() or "SETTINGS"
    return name if name.startswith("VMBACKUP_") else f"VMBACKUP_{name}"


def _database_reachable(settings: Settings) -> None:
    from app.db.reach import DatabaseUnreachable, ensure_reachable

    try:
        ensure_reachable(settings.effective_database_url)
    except DatabaseUnreachable as error:
        raise SystemExit(f"vmbackup: cannot reach the database {error}") from None


def _migrate(settings: Settings) -> None:
    from sqlalchemy.exc import DBAPIError

    from app.db.migrate import upgrade_to_head
    from app.db.reach import first_line
    from app.db.urls import display_url

    _database_reachable(settings)
    try:
        upgrade_to_head(settings.effective_database_url)
    except DBAPIError as error:  # e.g. gone between the check and the migration
        url = display_url(settings.effective_database_url)
        raise SystemExit(f"vmbackup: migrating {url} failed: {first_line(error)}") from None


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from app.main import create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = _settings(**overrides)
    if args.no_migrate:
        _database_reachable(settings)
    else:
        _migrate(settings)
    _tls_files_readable(settings)
    if not settings.is_loopback and not settings.tls:
        log.warning(
            "serving plain HTTP on %s: tokens and NBD URIs cross the network in clear "
            "(set VMBACKUP_TLS_CERT and VMBACKUP_TLS_KEY)",
            settings.host,
        )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        log_config=None,  # app.logs renders uvicorn's lines too
        access_log=False,  # app.api.request_context writes one with the request id
        proxy_headers=False,
    )


def _tls_files_readable(settings: Settings) -> None:
    for variable, path in (("TLS_CERT", settings.tls_cert), ("TLS_KEY", settings.tls_key)):
        if path is not None and not os.access(path, os.R_OK):
            raise SystemExit(f"vmbackup: invalid settings: VMBACKUP_{variable}: cannot read {path}")


def migrate(_args: argparse.Namespace) -> None:
    settings = _settings()
    _migrate(settings)
    print(f"vmbackup: database at head ({settings.effective_database_url.split('://')[0]})")


async def _find_orphans(settings: Settings) -> list[Orphan]:
    from app import orphans
    from app.db.session import Database

    database = Database(settings.effective_database_url)
    try:
        async with database.session_scope() as session:
            owned = await orphans.owned(session, settings)
    finally:
        await database.dispose()
    return list(orphans.find(settings, owned))


def list_orphans(args: argparse.Namespace) -> None:
    """One line per entry no row names: bytes, type, path; with --delete, entries
    older than --min-age are removed (a younger one may be a file an operator is
    preparing for a reuse_external backup)."""
    from app import orphans

    settings = _settings()
    found = asyncio.run(_find_orphans(settings))
    cutoff = datetime.now(UTC) - timedelta(seconds=args.min_age)
    removed = 0
    for orphan in found:
        action = ""
        if args.delete and orphan.modified_at < cutoff:
            action = "\tremoved" if orphans.remove(orphan, settings) else "\tkept"
            removed += action == "\tremoved"
        print(f"{orphan.bytes}\t{orphan.type}\t{orphan.path}{action}")
    total = sum(o.bytes for o in found)
    print(f"vmbackup: {len(found)} orphans, {total} bytes, {removed} removed")


def main(argv: list[str] | None = None) -> None:
    from app import client  # hosts, domains, backup, ...: the HTTP API's client (app/client/)

    if client.owns(argv):
        client.main(argv)
        return
    parser = argparse.ArgumentParser(prog="vmbackup", description=__doc__, epilog=client.HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the API and the worker pool")
    serve_parser.add_argument("--host", help="address to bind (VMBACKUP_HOST)")
    serve_parser.add_argument("--port", type=int, help="port (VMBACKUP_PORT)")
    serve_parser.add_argument(
        "--no-migrate", action="store_true", help="do not upgrade the database first"
    )
    serve_parser.set_defaults(run=serve)
    commands.add_parser("migrate", help="upgrade the database to head").set_defaults(run=migrate)
    orphans_parser = commands.add_parser(
        "orphans", help="list files under the roots that no backup or restore names"
    )
    orphans_parser.add_argument("--delete", action="store_true", help="remove them")
    orphans_parser.add_argument(
        "--min-age",
        type=float,
        default=3600,
        help="with --delete, keep entries modified in the last so many seconds (3600)",
    )
    orphans_parser.set_defaults(run=list_orphans)
    args = parser.parse_args(argv)
    logs.configure(_settings().log_level)
    args.run(args)


if __name__ == "__main__":
    main()

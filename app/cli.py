"""`vmbackup serve | migrate | orphans`."""

from __future__ import annotations

import argparse
import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import ValidationError

from app.settings import Settings

if TYPE_CHECKING:
    from app.orphans import Orphan


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = "; ".join(
            f"VMBACKUP_{'_'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
            for e in error.errors()
        )
        raise SystemExit(f"vmbackup: invalid settings: {problems}") from None
    except ValueError as error:  # e.g. VMBACKUP_TOKENS that is not JSON
        raise SystemExit(f"vmbackup: invalid settings: {error}") from None


def _migrate(settings: Settings) -> None:
    from app.db.migrate import upgrade_to_head

    upgrade_to_head(settings.effective_database_url)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from app.main import create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = _settings(**overrides)
    if not args.no_migrate:
        _migrate(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=False,
    )


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
    parser = argparse.ArgumentParser(prog="vmbackup", description=__doc__)
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
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args.run(args)


if __name__ == "__main__":
    main()

"""0003 marks as the service's own only targets it is sure libvirt made for it:
succeeded push backups without reuse_external. A failed backup's target may be
another backup's file, and must never be deleted with it."""

from __future__ import annotations

import asyncio
import uuid

import sqlalchemy as sa
from alembic import command

from app.db.base import UTCDateTime, utcnow
from app.db.migrate import alembic_config
from app.db.session import make_engine

BACKUPS = sa.table(
    "backups",
    *(sa.column(name, sa.String) for name in ("host", "domain_uuid", "domain_name", "mode")),
    sa.column("id", sa.Uuid),
    sa.column("kind", sa.String),
    sa.column("status", sa.String),
    sa.column("quiesce", sa.Boolean),
    sa.column("reuse_external", sa.Boolean),
    sa.column("lease_epoch", sa.Integer),
    sa.column("created_at", UTCDateTime(timezone=True)),
)
DISKS = sa.table(
    "backup_disks",
    sa.column("backup_id", sa.Uuid),
    sa.column("name", sa.String),
    sa.column("position", sa.Integer),
    sa.column("backup", sa.Boolean),
    sa.column("bitmap", sa.Boolean),
    sa.column("target", sa.String),
    sa.column("scratch", sa.String),
)


def _backup(mode: str, status: str, *, reuse_external: bool = False) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "host": "local",
        "domain_uuid": str(uuid.uuid4()),
        "domain_name": "d",
        "mode": mode,
        "kind": "full",
        "status": status,
        "quiesce": False,
        "reuse_external": reuse_external,
        "lease_epoch": 0,
        "created_at": utcnow(),
    }


async def test_only_succeeded_service_made_push_targets_become_owned(database_url: str) -> None:
    config = alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, config, "0003-1")
    rows = {
        "made": _backup("push", "succeeded"),
        "failed": _backup("push", "failed"),
        "premade": _backup("push", "succeeded", reuse_external=True),
        "pull": _backup("pull", "succeeded"),
    }
    engine = make_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(sa.insert(BACKUPS), list(rows.values()))
            await connection.execute(
                sa.insert(DISKS),
                [
                    {
                        "backup_id": row["id"],
                        "name": "vda",
                        "position": 0,
                        "backup": True,
                        "bitmap": False,
                        "target": None if label == "pull" else f"/b/{label}.qcow2",
                        "scratch": "/s/x.scratch" if label == "pull" else None,
                    }
                    for label, row in rows.items()
                ],
            )
        await asyncio.to_thread(command.upgrade, config, "head")
        async with engine.connect() as connection:
            result = await connection.execute(
                sa.text("SELECT target, owns_target FROM backup_disks")
            )
            found = {target: owned for target, owned in result.all()}
    finally:
        await engine.dispose()
    assert {target: bool(owned) for target, owned in found.items()} == {
        "/b/made.qcow2": True,
        "/b/failed.qcow2": False,
        "/b/premade.qcow2": False,
        None: False,
    }

"""Runs one restore: `qemu-img convert` of each disk's newest backup file (its
chain is self-contained) into a standalone image. Rerunnable after a crash: it
writes to a temporary name and renames once whole."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from app.crashpoints import crash_point
from app.db.models import Restore, RestoreStatus
from app.db.session import Database
from app.transitions import finish_restore

log = logging.getLogger(__name__)


async def _convert(source: str, target: Path, fmt: str) -> None:
    partial = target.with_name(f".{target.name}.partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        "qemu-img",
        "convert",
        "-U",
        "-O",
        fmt,
        source,
        str(partial),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(stderr.decode(errors="replace").strip() or "qemu-img convert failed")
    crash_point("restore-converting")
    os.replace(partial, target)


async def run_restore(database: Database, restore_id: uuid.UUID, epoch: int) -> None:
    async with database.session_scope() as session:
        restore = await session.get(Restore, restore_id)
    assert restore is not None
    disks: list[dict[str, Any]] = [dict(d) for d in restore.disks]
    try:
        for disk in disks:
            target = Path(disk["file"])
            await _convert(disk["source"], target, disk["format"])
            disk["bytes"] = target.stat().st_blocks * 512
    except (OSError, RuntimeError) as error:
        log.warning("restore %s failed: %s", restore_id, error)
        await finish_restore(
            database,
            restore_id,
            epoch,
            RestoreStatus.FAILED,
            error_code="restore-failed",
            error_message=str(error),
            disks=disks,
        )
        return
    await finish_restore(database, restore_id, epoch, RestoreStatus.SUCCEEDED, disks=disks)

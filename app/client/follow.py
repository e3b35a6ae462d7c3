"""Waiting for a backup or a restore to end, with a live progress bar on stderr, and the
exit code that tells a script how it ended."""

from __future__ import annotations

import time
from enum import IntEnum

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from app.client.api import JSON, Api

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
RESTORE_POLL_SECONDS = 0.5


class Exit(IntEnum):
    """Exit codes. 2 is click's own, for a command line it cannot parse."""

    OK = 0
    FAILED = 1
    CANCELLED = 3
    PROBLEM = 4  # the service answered a problem, or could not be reached


def exit_code(status: str) -> Exit:
    return {"failed": Exit.FAILED, "cancelled": Exit.CANCELLED}.get(status, Exit.OK)


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TimeElapsedColumn(),
        console=console,
    )


def _show_change(progress: Progress, backup_id: str, event: JSON) -> None:
    line = f"{backup_id[:8]} {event.get('previous_status') or '-'} -> {event['status']}"
    if event.get("message"):
        line += f": {event['message']}"
    progress.console.print(line, markup=False, highlight=False)


def _update(progress: Progress, task: TaskID, event: JSON) -> None:
    if event.get("progress") is not None:
        done = event["progress"].get("bytes_processed")
        total = event["progress"].get("bytes_total")
        progress.update(task, total=total or None, completed=done or 0)
    else:
        progress.update(task, description=event["status"])


def follow_backup(api: Api, backup_id: str, console: Console, *, until_ready: bool = False) -> JSON:
    """Follow the backup's event stream (it replays from the first event) until a terminal
    status, or `ready` with `until_ready`; return the backup as the API has it then."""
    stop_at = TERMINAL | {"ready"} if until_ready else TERMINAL
    with _progress(console) as progress:
        task = progress.add_task("queued", total=None)
        for event in api.events(f"/v1/backups/{backup_id}/events"):
            data = event.json()
            _update(progress, task, data)
            if event.name == "status":
                _show_change(progress, backup_id, data)
                if data["status"] in stop_at:
                    break
        backup = api.get(f"/v1/backups/{backup_id}")
        total = backup["progress"].get("bytes_total")
        if backup["status"] == "succeeded" and total:
            progress.update(task, total=total, completed=total)
        elif not total:
            # A job too short to report any progress: a bar at 0/? would read as stuck.
            progress.update(task, visible=False)
    return backup


def follow_restore(api: Api, restore_id: str, console: Console) -> JSON:
    """Restores have no event stream: poll until the restore ends."""
    with console.status(f"restore {restore_id[:8]}: queued") as status:
        while True:
            restore = api.get(f"/v1/restores/{restore_id}")
            status.update(f"restore {restore_id[:8]}: {restore['status']}")
            if restore["status"] in TERMINAL:
                return restore
            time.sleep(RESTORE_POLL_SECONDS)

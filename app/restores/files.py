"""A restore's files: `<restore root>/<restore id>/<disk>.<format>`, written as
a hidden partial name first. Made and removed without following links."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from app.backups import paths
from app.db.models import Restore
from app.errors import PathNotAllowed
from app.settings import Settings

log = logging.getLogger(__name__)


def partial_name(file: str) -> str:
    path = Path(file)
    return str(path.with_name(f".{path.name}.partial"))


def owned_paths(restore: Restore) -> list[str]:
    """Every file the restore writes or may have left while running."""
    return [p for disk in restore.disks for p in (disk["file"], partial_name(disk["file"]))]


def remove(restore: Restore, settings: Settings) -> None:
    """Its recorded files (never a link's target), then its directory if empty.
    Failures are logged, not raised: the row is already gone (`vmbackup
    orphans` lists what stayed)."""
    root = settings.restores_dir
    for path in owned_paths(restore):
        try:
            paths.remove_file(path, root, what=f"restore {restore.id}")
        except (OSError, PathNotAllowed) as error:
            log.warning("restore %s: not removed: %s", restore.id, error)
    with contextlib.suppress(OSError):
        paths.remove_empty_dir(root, (str(restore.id),), what=f"restore {restore.id}")


def replace_into_place(directory: int, partial: str, final: str) -> int:
    """Rename the whole partial file to its final name inside the restore's
    directory (renaming never follows a link); its allocated bytes."""
    os.rename(partial, final, src_dir_fd=directory, dst_dir_fd=directory)
    return os.stat(final, dir_fd=directory, follow_symlinks=False).st_blocks * 512

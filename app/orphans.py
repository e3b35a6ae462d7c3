"""Files under the roots that no row owns: left by a crash, by deletions made
before the service removed restores' files, or by hand. Listed for an operator
(`GET /v1/admin/orphans`, `vmbackup orphans`), removed only on request."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.backups import paths
from app.db.models import BackupDisk, Restore
from app.restores.files import owned_paths
from app.settings import Settings


@dataclass(frozen=True)
class Orphan:
    root: str  # backup | scratch | restore
    path: str
    type: str  # file | symlink | directory | other
    bytes: int
    modified_at: datetime


def roots(settings: Settings) -> dict[str, Path]:
    return {
        "backup": settings.backups_dir,
        "scratch": settings.scratch_dir,
        "restore": settings.restores_dir,
    }


def _relative(path: str, root: Path) -> str | None:
    for base in (root, Path(os.path.realpath(root))):
        try:
            return str(PurePosixPath(path).relative_to(base))
        except ValueError:
            continue
    return None


async def owned(session: AsyncSession, settings: Settings) -> dict[str, set[str]]:
    """Per root, the paths (relative to it) some row names."""
    named: list[str] = []
    for target, scratch in await session.execute(select(BackupDisk.target, BackupDisk.scratch)):
        named.extend(p for p in (target, scratch) if p)
    for restore in await session.scalars(select(Restore)):
        named.extend(owned_paths(restore))
    found: dict[str, set[str]] = {label: set() for label in roots(settings)}
    for label, root in roots(settings).items():
        for path in named:
            relative = _relative(path, root)
            if relative is not None:
                found[label].add(relative)
    return found


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "directory" if stat.S_ISDIR(mode) else "other"


def _orphan(label: str, path: str) -> Orphan | None:
    try:
        found = os.lstat(path)
    except FileNotFoundError:  # removed while we looked
        return None
    size = found.st_blocks * 512 if stat.S_ISREG(found.st_mode) else 0
    modified = datetime.fromtimestamp(found.st_mtime, UTC)
    return Orphan(label, path, _kind(found.st_mode), size, modified)


def find(settings: Settings, owned_paths: dict[str, set[str]]) -> Iterator[Orphan]:
    """Every entry under the roots that no row names, without following links;
    a directory only when it is empty (its files are listed otherwise)."""
    for label, root in roots(settings).items():
        mine = owned_paths[label]
        for directory, subdirs, files in os.walk(root, followlinks=False):
            relative_dir = os.path.relpath(directory, root)
            for name in sorted(
                files + [d for d in subdirs if os.path.islink(os.path.join(directory, d))]
            ):
                relative = os.path.normpath(os.path.join(relative_dir, name))
                if relative not in mine:
                    yield from _listed(_orphan(label, os.path.join(directory, name)))
            if directory != str(root) and not subdirs and not files:
                yield from _listed(_orphan(label, directory))


def _listed(orphan: Orphan | None) -> Iterator[Orphan]:
    if orphan is not None:
        yield orphan


def remove(orphan: Orphan, settings: Settings) -> bool:
    """Remove one listed entry, as it is now, without following links: a regular
    file, a link itself, or an empty directory."""
    root = roots(settings)[orphan.root]
    names = paths.parts_under(orphan.path, root, what="orphan")
    if orphan.type == "directory":
        return paths.remove_empty_dir(root, names, what="orphan")
    with paths.open_dir(root, names[:-1], create=False, what="orphan") as parent:
        found = os.stat(names[-1], dir_fd=parent, follow_symlinks=False)
        if _kind(found.st_mode) != orphan.type or orphan.type not in ("file", "symlink"):
            return False
        os.unlink(names[-1], dir_fd=parent)
    return True

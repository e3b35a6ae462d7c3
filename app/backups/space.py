"""Free space against what a backup or a restore is expected to write."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

from app.errors import InsufficientStorage


def _existing_ancestor(path: str) -> str:
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def require_room(needs: Iterable[tuple[str, int]], *, reserve: int, where: str) -> None:
    """`needs` are (path, bytes) of files about to be written. Summed per file
    system, each must leave `reserve` bytes free. The problem names `where` (a
    root), never a host path: a 507 reaches clients."""
    per_device: dict[int, tuple[str, int]] = {}
    for path, size in needs:
        anchor = _existing_ancestor(path)
        device = os.stat(anchor).st_dev
        _, total = per_device.get(device, (anchor, 0))
        per_device[device] = (anchor, total + size)
    for anchor, total in per_device.values():
        free = shutil.disk_usage(anchor).free
        if total + reserve > free:
            raise InsufficientStorage(
                f"the {where} has {free} bytes free; this needs an estimated {total} bytes "
                f"plus the {reserve} bytes kept free"
            )

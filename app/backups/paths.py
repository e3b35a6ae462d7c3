"""Paths a client gives are confined to the host's configured roots."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from app.errors import PathNotAllowed


def confine(given: str, root: Path, *, what: str) -> Path:
    """The path, if it lies inside `root` with no `..` and no symbolic link
    anywhere on the way (the root itself may be reached through links)."""
    path = PurePosixPath(given)
    if not path.is_absolute() or ".." in path.parts or "\x00" in given:
        raise PathNotAllowed(f"{what} {given!r} must be an absolute path without '..'")
    real_root = Path(os.path.realpath(root))
    for candidate_root in (root, real_root):
        try:
            relative = path.relative_to(candidate_root)
            break
        except ValueError:
            continue
    else:
        raise PathNotAllowed(f"{what} {given!r} is outside the allowed root {root}")
    if not relative.parts:
        raise PathNotAllowed(f"{what} {given!r} is the root itself, not a file in it")
    current = real_root
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            raise PathNotAllowed(f"{what} {given!r} passes through a symbolic link at {current}")
    return current

"""Paths are confined to the host's configured roots: when a client gives one
(`confine`), and again at the moment of use. Files and directories under a root
are made, looked at and removed through directory descriptors opened with
O_NOFOLLOW from the root down, so a symbolic link swapped in after the request
is refused instead of followed (the root itself may be reached through links:
it comes from the settings)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from app.errors import PathNotAllowed

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _relative(path: PurePosixPath, root: Path) -> PurePosixPath | None:
    for candidate_root in (root, Path(os.path.realpath(root))):
        try:
            return path.relative_to(candidate_root)
        except ValueError:
            continue
    return None


def confine(given: str, root: Path, *, what: str) -> Path:
    """The path, if it lies inside `root` with no `..` and no symbolic link
    anywhere on the way (the root itself may be reached through links)."""
    path = PurePosixPath(given)
    if not path.is_absolute() or ".." in path.parts or "\x00" in given:
        raise PathNotAllowed(f"{what} {given!r} must be an absolute path without '..'")
    relative = _relative(path, root)
    if relative is None:
        raise PathNotAllowed(f"{what} {given!r} is outside the allowed root {root}")
    if not relative.parts:
        raise PathNotAllowed(f"{what} {given!r} is the root itself, not a file in it")
    current = Path(os.path.realpath(root))
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            raise PathNotAllowed(f"{what} {given!r} passes through a symbolic link at {current}")
    return current


def parts_under(path: str, root: Path, *, what: str) -> tuple[str, ...]:
    """The names from `root` down to the file, checked as `confine` checks a
    given path but without touching the file system."""
    pure = PurePosixPath(path)
    relative = _relative(pure, root) if pure.is_absolute() and ".." not in pure.parts else None
    if relative is None or not relative.parts or "\x00" in path:
        raise PathNotAllowed(f"{what} {path!r} is not a file under the root {root}")
    return relative.parts


@contextlib.contextmanager
def open_dir(root: Path, names: tuple[str, ...], *, create: bool, what: str) -> Iterator[int]:
    """A descriptor on root/names..., each step opened with O_NOFOLLOW (made
    first when `create`). PathNotAllowed when a step is a link or not a directory;
    FileNotFoundError when one is missing and not to be made."""
    if create:
        Path(root).mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=fd)
            try:
                step = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise PathNotAllowed(
                        f"{what}: {name!r} under {root} is a symbolic link or not a directory"
                    ) from None
                raise
            os.close(fd)
            fd = step
        yield fd
    finally:
        os.close(fd)


def close_to_others(root: Path) -> None:
    """The root made, or kept, with no access for other users: a unix socket's
    own mode is QEMU's to choose, and a user who cannot search its directory
    cannot connect to it. The owner (the service's user) and the group (which
    QEMU's user needs, to create its sockets there) keep theirs."""
    Path(root).mkdir(mode=0o770, parents=True, exist_ok=True)
    mode = stat.S_IMODE(os.stat(root).st_mode)
    if mode & 0o007:
        os.chmod(root, mode & ~0o007)


def make_parents(path: str, root: Path, *, what: str) -> None:
    """Make the directories from `root` down to the file's, following no link."""
    with open_dir(root, parts_under(path, root, what=what)[:-1], create=True, what=what):
        pass


def lstat(path: str, root: Path, *, what: str) -> os.stat_result | None:
    """The file itself (a link is not followed), or None when it is not there."""
    names = parts_under(path, root, what=what)
    try:
        with open_dir(root, names[:-1], create=False, what=what) as parent:
            return os.stat(names[-1], dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def require_absent(path: str, root: Path, *, what: str) -> None:
    if lstat(path, root, what=what) is not None:
        raise PathNotAllowed(f"{what} {path} exists already: it is not this backup's to write")


def require_regular_file(path: str, root: Path, *, what: str) -> os.stat_result:
    found = lstat(path, root, what=what)
    if found is None or not stat.S_ISREG(found.st_mode):
        kind = "missing" if found is None else "not a regular file"
        raise PathNotAllowed(f"{what} {path} is {kind}")
    return found


def remove_file(path: str, root: Path, *, what: str, prune: int = 0) -> bool:
    """Unlink a regular file under `root` (never a link's target, never a
    directory), then remove up to `prune` of its parent directories that are left
    empty (not the root). True when a file was removed."""
    names = parts_under(path, root, what=what)
    try:
        with open_dir(root, names[:-1], create=False, what=what) as parent:
            found = os.stat(names[-1], dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISREG(found.st_mode):
                return False
            os.unlink(names[-1], dir_fd=parent)
    except FileNotFoundError:
        return False
    for depth in range(1, min(prune, len(names) - 1) + 1):
        if not remove_empty_dir(root, names[:-depth], what=what):
            break
    return True


def remove_empty_dir(root: Path, names: tuple[str, ...], *, what: str) -> bool:
    """rmdir root/names... if it is an empty directory reached without links."""
    if not names:
        return False
    try:
        with open_dir(root, names[:-1], create=False, what=what) as parent:
            os.rmdir(names[-1], dir_fd=parent)
    except (FileNotFoundError, PathNotAllowed):
        return False
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            return False
        raise
    return True

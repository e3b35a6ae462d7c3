"""The one door to the image tools (qemu-img), as `app/libvirt/` is to libvirt.

A guest controls every byte of its own disk, so a raw backup may hold a qcow2
header that names a host file as its backing file. Hence the rules, kept here
and nowhere else:

- every file is opened with its format named, taken from what the service
  recorded, never probed;
- a chain is opened only through the files the service recorded: `convert`
  names every link and ends the chain itself (`"backing": null`), so nothing a
  header names is ever opened, and `verify_chain` checks each recorded file's
  header (`qemu-img info` opens no backing file) points at the recorded link;
- every call has a timeout, and fails with `ImageToolError`, which carries the
  tool's stderr for the logs (clients get `message`, which quotes no output).

The one NBD tool the service runs is `nbdcopy`, with `qemu-nbd` serving the
pinned chain read-only, to stream a disk's content into a digest (`digest`);
a client reads pull exports with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.errors import AppError

log = logging.getLogger(__name__)

QEMU_IMG = "qemu-img"
ImageFormat = Literal["qcow2", "raw"]
FORMATS: tuple[ImageFormat, ...] = ("qcow2", "raw")
# Metadata calls read a header or rewrite one: seconds even on a busy host.
INFO_TIMEOUT = 60.0
REBASE_TIMEOUT = 120.0
# How long a push target may stay locked by QEMU after libvirt reports the job
# complete (10-20 ms seen; seconds on a loaded host).
RELEASE_TIMEOUT = 30.0


class ImageToolError(AppError):
    """An image-tool call failed, timed out, or found an image that is not what
    the service recorded. `message` (the problem's detail) is for clients;
    `stderr`, the tool's own words with host paths, is for the logs only."""

    code = "image-tool-error"
    title = "Image tool error"

    def __init__(self, message: str, *, stderr: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.stderr = stderr

    def __str__(self) -> str:
        return f"{self.message}: {self.stderr}" if self.stderr else self.message


class ChainMismatch(ImageToolError):
    """A recorded file's header is not the recorded format or names another backing file."""

    status = 409
    code = "chain-broken"
    title = "Backup chain broken"


@dataclass(frozen=True)
class Image:
    """A file as the service recorded it: where, and in which format."""

    path: str
    format: str

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ChainMismatch(f"{self.path}: recorded format {self.format!r} is not qcow2 or raw")
        if not os.path.isabs(self.path):
            raise ChainMismatch(f"{self.path}: not an absolute path")


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int
    backing_file: str | None  # absolute, as qemu-img resolves it
    backing_format: str | None


async def _run(
    args: Sequence[str], timeout: float, *, log_failure: bool = True, pass_fds: Sequence[int] = ()
) -> str:
    """`qemu-img ARGS`; its stdout. Killed at the timeout, and when the caller is
    cancelled. A failure is logged with the tool's stderr, unless expected."""
    process = await asyncio.create_subprocess_exec(
        QEMU_IMG,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=pass_fds,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as stopped:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if isinstance(stopped, TimeoutError):
            raise ImageToolError(f"qemu-img {args[0]} timed out after {timeout:g} s") from None
        raise
    if process.returncode != 0:
        error = ImageToolError(
            f"qemu-img {args[0]} failed (exit {process.returncode})",
            stderr=stderr.decode(errors="replace").strip(),
        )
        if log_failure:
            log.warning("%s", error)
        raise error
    return stdout.decode(errors="replace")


def _parse_info(raw: dict[str, Any]) -> ImageInfo:
    return ImageInfo(
        format=str(raw["format"]),
        virtual_size=int(raw["virtual-size"]),
        backing_file=raw.get("full-backing-filename") or raw.get("backing-filename"),
        backing_format=raw.get("backing-filename-format"),
    )


async def info(image: Image, *, timeout: float = INFO_TIMEOUT) -> ImageInfo:
    """The file's own header, read as its recorded format. Its backing file is
    named in the answer but not opened (only `--backing-chain` would open it)."""
    out = await _run(["info", "--output=json", "-U", "-f", image.format, image.path], timeout)
    return _parse_info(json.loads(out))


async def is_released(image: Image, *, timeout: float = INFO_TIMEOUT) -> bool:
    """Whether no process holds the image's write lock: `qemu-img info` without
    `-U` takes a shared lock, which QEMU's write lock refuses."""
    try:
        await _run(
            ["info", "--output=json", "-f", image.format, image.path], timeout, log_failure=False
        )
    except ImageToolError as error:
        if "lock" in error.stderr:
            return False
        raise
    return True


async def wait_released(image: Image, *, timeout: float = RELEASE_TIMEOUT) -> None:
    """Wait until QEMU has closed an image it wrote: libvirt reports a push
    complete 10-20 ms before QEMU detaches the target."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await is_released(image, timeout=max(1.0, deadline - loop.time())):
        if loop.time() > deadline:
            raise ImageToolError(f"an image is still locked after {timeout:g} s")
        await asyncio.sleep(0.02)


def _same_file(a: str, b: str) -> bool:
    return os.path.normpath(a) == os.path.normpath(b)


async def verify_chain(chain: Sequence[Image], *, timeout: float = INFO_TIMEOUT) -> None:
    """Each recorded link (oldest first) opens as its recorded format, the oldest
    names no backing file, and every other names exactly the link before it,
    with that link's format. Nothing outside the list is ever opened."""
    if not chain:
        raise ChainMismatch("an empty chain")
    below: Image | None = None
    for image in chain:
        found = await info(image, timeout=timeout)
        if found.format != image.format:
            raise ChainMismatch(f"{image.path}: opens as {found.format}, recorded {image.format}")
        if below is None and found.backing_file is not None:
            raise ChainMismatch(f"{image.path}: the first link names a backing file")
        if below is not None and not (
            found.backing_file is not None
            and _same_file(found.backing_file, below.path)
            and found.backing_format == below.format
        ):
            raise ChainMismatch(
                f"{image.path}: its backing file is not the recorded link {below.path} "
                f"({below.format})",
                stderr=f"header names {found.backing_file!r} ({found.backing_format})",
            )
        below = image


def chain_spec(chain: Sequence[Image]) -> str:
    """A `json:` filename that opens the chain (oldest first) with every node's
    driver named and ends it with `"backing": null`: what the headers say about
    backing files is not followed."""
    if not chain:
        raise ChainMismatch("an empty chain")
    node: dict[str, Any] | None = None
    for image in chain:
        if image.format == "raw" and node is not None:
            raise ChainMismatch(f"{image.path}: a raw image cannot have a backing file")
        spec: dict[str, Any] = {
            "driver": image.format,
            "file": {"driver": "file", "filename": image.path},
        }
        if image.format == "qcow2":
            spec["backing"] = node
        node = spec
    return "json:" + json.dumps(node)


@dataclass(frozen=True)
class InDirectory:
    """A file named inside a directory the caller holds open (checked, without
    following links, when it was opened): qemu-img reaches it through
    `/proc/self/fd`, so a path swapped for a link afterwards is not followed."""

    directory_fd: int
    name: str

    def __post_init__(self) -> None:
        if "/" in self.name or self.name in ("", ".", ".."):
            raise ChainMismatch(f"{self.name!r}: not a file name")

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.directory_fd}/{self.name}"


async def convert(
    chain: Sequence[Image], target: InDirectory, target_format: str, *, timeout: float
) -> None:
    """Write the disk the chain holds (oldest first) into `target` as one
    standalone image of `target_format`."""
    if target_format not in FORMATS:
        raise ChainMismatch(f"target format {target_format!r} is not one of {FORMATS}")
    await _run(
        ["convert", "-U", "-O", target_format, chain_spec(chain), target.path],
        timeout,
        pass_fds=(target.directory_fd,),
    )


async def rebase_unsafe(image: Image, backing: Image, *, timeout: float = REBASE_TIMEOUT) -> None:
    """Re-point a qcow2's backing file at `backing` (`-u`: the header only;
    neither the old nor the new backing file is opened)."""
    if image.format != "qcow2":
        raise ChainMismatch(f"{image.path}: only a qcow2 image has a backing file")
    await _run(
        [
            "rebase",
            "-u",
            "-f",
            image.format,
            "-b",
            backing.path,
            "-F",
            backing.format,
            image.path,
        ],
        timeout,
    )


DIGEST_CHUNK = 1024 * 1024
CHECK_TIMEOUT = 600.0


async def check(image: Image, *, timeout: float = CHECK_TIMEOUT) -> None:
    """`qemu-img check` of a qcow2 file's metadata (a raw file has none):
    ChainMismatch when it finds corruptions or leaks it cannot account for."""
    if image.format != "qcow2":
        return
    try:
        raw = await _run(
            ["check", "-f", image.format, "--output=json", image.path], timeout, log_failure=False
        )
    except ImageToolError as error:
        # Exit 2: corruptions found; 3: leaked clusters only (harmless); else unreadable.
        raise ChainMismatch(f"{image.path}: qemu-img check failed", stderr=error.stderr) from None
    found = json.loads(raw)
    if found.get("corruptions") or found.get("check-errors"):
        raise ChainMismatch(f"{image.path}: qemu-img check finds the image corrupt")


async def digest(chain: Sequence[Image], *, timeout: float) -> str:
    """SHA-256 of the disk the chain holds (oldest first), read once, in order:
    `qemu-nbd` serves the pinned chain read-only (nothing a header names is
    opened) and `nbdcopy` streams it to us; no temporary copy is written."""
    process = await asyncio.create_subprocess_exec(
        "nbdcopy",
        "--",
        "[",
        "qemu-nbd",
        "--read-only",
        "--persistent",
        chain_spec(chain),
        "]",
        "-",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = process.stdout, process.stderr
    assert stdout is not None
    assert stderr is not None
    hashed = hashlib.sha256()

    async def read_all() -> None:
        while chunk := await stdout.read(DIGEST_CHUNK):
            hashed.update(chunk)
        await process.wait()

    try:
        await asyncio.wait_for(read_all(), timeout)
    except (TimeoutError, asyncio.CancelledError) as stopped:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if isinstance(stopped, TimeoutError):
            raise ImageToolError(f"reading a chain timed out after {timeout:g} s") from None
        raise
    if process.returncode != 0:
        raise ImageToolError(
            f"nbdcopy failed reading a chain (exit {process.returncode})",
            stderr=(await stderr.read()).decode(errors="replace").strip(),
        )
    return hashed.hexdigest()

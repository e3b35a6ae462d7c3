"""The image-tool door against the real qemu-img: formats are named, never
probed; chains are opened only through the recorded links; calls time out."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app import images
from app.images import ChainMismatch, Image, ImageToolError, InDirectory

MiB = 1024 * 1024
SECRET = b"HOST-FILE-BYTES!" * (MiB // 16)


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@contextmanager
def into(path: Path) -> Iterator[InDirectory]:
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield InDirectory(fd, path.name)
    finally:
        os.close(fd)


@pytest.fixture
def host_file(tmp_path: Path) -> Path:
    path = tmp_path / "host-secret.bin"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def raw_with_qcow2_header(tmp_path: Path, host_file: Path) -> Path:
    """A raw disk whose first bytes, written by its guest, are a qcow2 image
    backed by a host file."""
    header = tmp_path / "header.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(host_file), "-F", "raw", str(header), "1M")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(header.read_bytes().ljust(4 * MiB, b"\0"))
    return disk


async def test_a_raw_file_with_a_qcow2_header_is_read_as_raw(
    raw_with_qcow2_header: Path, tmp_path: Path
) -> None:
    found = await images.info(Image(str(raw_with_qcow2_header), "raw"))
    assert (found.format, found.virtual_size, found.backing_file) == ("raw", 4 * MiB, None)
    out = tmp_path / "out.raw"
    with into(out) as target:
        await images.convert([Image(str(raw_with_qcow2_header), "raw")], target, "raw", timeout=60)
    assert out.read_bytes() == raw_with_qcow2_header.read_bytes()


async def test_convert_ends_the_chain_at_the_recorded_links(
    tmp_path: Path, host_file: Path
) -> None:
    """A qcow2 whose header names a host file, recorded as a chain of one link:
    its unallocated clusters read as zeros, not as the host file."""
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(host_file), "-F", "raw", str(top), "1M")
    out = tmp_path / "out.raw"
    with into(out) as target:
        await images.convert([Image(str(top), "qcow2")], target, "raw", timeout=60)
    assert out.read_bytes() == b"\0" * MiB


async def test_a_chain_whose_header_names_another_file_is_refused(
    tmp_path: Path, host_file: Path
) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(host_file), "-F", "raw", str(top), "1M")
    with pytest.raises(ChainMismatch) as caught:
        await images.verify_chain([Image(str(base), "qcow2"), Image(str(top), "qcow2")])
    assert str(host_file) not in caught.value.message  # for clients: the record, not the header
    assert str(host_file) in caught.value.stderr  # for the logs
    with pytest.raises(ChainMismatch, match="first link names a backing file"):
        await images.verify_chain([Image(str(top), "qcow2")])

    qemu_img("rebase", "-u", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    await images.verify_chain([Image(str(base), "qcow2"), Image(str(top), "qcow2")])
    with pytest.raises(ChainMismatch, match="not the recorded link"):  # recorded format differs
        await images.verify_chain([Image(str(base), "raw"), Image(str(top), "qcow2")])


async def test_a_file_that_is_not_its_recorded_format_fails_with_the_tools_words(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * MiB)
    with pytest.raises(ImageToolError) as caught:
        await images.info(Image(str(raw), "qcow2"))
    assert caught.value.message == "qemu-img info failed (exit 1)"
    assert "qcow2" in caught.value.stderr.lower()


async def test_a_call_past_its_timeout_is_killed_and_typed(tmp_path: Path) -> None:
    source = tmp_path / "big.raw"
    with source.open("wb") as f:
        f.truncate(8 * 1024 * MiB)
    with into(tmp_path / "out.qcow2") as target, pytest.raises(ImageToolError, match="timed out"):
        await images.convert([Image(str(source), "raw")], target, "qcow2", timeout=0.001)


async def test_only_recorded_formats_and_absolute_paths_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ChainMismatch):
        Image(str(tmp_path / "x"), "vmdk")
    with pytest.raises(ChainMismatch):
        Image("relative.qcow2", "qcow2")
    with pytest.raises(ChainMismatch, match="raw image cannot have a backing"):
        images.chain_spec([Image("/a.qcow2", "qcow2"), Image("/b.raw", "raw")])
    with pytest.raises(ChainMismatch):
        await images.rebase_unsafe(Image("/b.raw", "raw"), Image("/a.qcow2", "qcow2"))


async def test_convert_writes_into_the_directory_it_holds_even_if_its_path_is_swapped(
    tmp_path: Path,
) -> None:
    source = tmp_path / "disk.raw"
    source.write_bytes(b"\x5a" * MiB)
    (tmp_path / "restore").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    with into(tmp_path / "restore" / "vda.raw") as target:
        (tmp_path / "restore").rename(tmp_path / "moved")
        (tmp_path / "restore").symlink_to(outside)
        await images.convert([Image(str(source), "raw")], target, "raw", timeout=60)
    assert list(outside.iterdir()) == []
    assert (tmp_path / "moved" / "vda.raw").read_bytes() == source.read_bytes()
    with pytest.raises(ChainMismatch):
        InDirectory(0, "../escape")

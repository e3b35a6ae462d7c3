"""Stopping and starting the real libvirtd, as a package upgrade does, for the
tests and the chaos bench; and a connection that survives it.

    with libvirtd_down():          # SIGTERM to the daemon (by its pidfile), wait
        ...                        # libvirtd is away; QEMU and its jobs go on
    # started again (`libvirtd -d --listen`) and answering `virsh version`

    live = LiveConnection()
    live.conn.lookupByUUIDString(...)   # reopened after a restart

Stopping libvirtd disturbs every other user of it (other test runs on this
machine): keep each outage short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt

URI = "qemu:///system"
PIDFILE = Path("/run/libvirtd.pid")
START_COMMAND = ("libvirtd", "-d", "--listen")  # as the dev host set-up starts it


def _wait(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def answers() -> bool:
    """`virsh version` succeeds: the daemon accepts connections again."""
    probe = subprocess.run(
        ["virsh", "-c", URI, "version"], capture_output=True, timeout=30, check=False
    )
    return probe.returncode == 0


def stop_libvirtd(timeout: float = 30.0) -> None:
    """SIGTERM to the daemon named in its pidfile (not by name: nothing else is
    touched); QEMU processes and their block jobs keep running."""
    pid = int(PIDFILE.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    _wait(lambda: not _running(pid), f"libvirtd {pid} exits", timeout)


def start_libvirtd(timeout: float = 60.0, attempts: int = 3) -> None:
    """Start libvirtd and wait until it answers. A start can fail while the old
    daemon is still letting go of its sockets and pidfile: try again, since a
    libvirtd left down would fail every test after this one."""
    for attempt in range(1, attempts + 1):
        subprocess.run(
            START_COMMAND,
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        try:
            _wait(answers, "libvirtd answers `virsh version`", timeout / attempts)
            return
        except TimeoutError:
            if attempt == attempts:
                raise
            time.sleep(1.0)


def ensure_libvirtd() -> None:
    """libvirtd up before a test needs it, whatever an earlier test left."""
    if not answers():
        start_libvirtd()


@contextmanager
def libvirtd_down() -> Iterator[None]:
    """libvirtd is stopped inside the block and started again after it, even
    when the block or the stop fails."""
    try:
        stop_libvirtd()
        yield
    finally:
        start_libvirtd()


def restart_libvirtd(down_seconds: float = 1.0, during: Callable[[], None] | None = None) -> None:
    """Stop libvirtd for about `down_seconds` (longer if `during`, called while
    it is down, takes longer), then start it again."""
    with libvirtd_down():
        back_at = time.monotonic() + down_seconds
        if during is not None:
            during()
        time.sleep(max(0.0, back_at - time.monotonic()))


class LiveConnection:
    """A libvirt connection opened again when libvirtd restarted under it."""

    def __init__(self, uri: str = URI) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is not None and not self._alive(self._conn):
            self.close()
        if self._conn is None:
            self._conn = libvirt.open(self.uri)
        return self._conn

    @staticmethod
    def _alive(conn: libvirt.virConnect) -> bool:
        try:
            conn.getLibVersion()  # isAlive() trusts a socket that may be closed
        except libvirt.libvirtError:
            return False
        return True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass  # closed with the daemon that went away

"""A domain's backup begins alone with QEMU's block graph.

QEMU 7.2 (Debian 12) aborts the whole guest, `qcow2_get_specific_info: Assertion
'false' failed`, when it is asked about its block nodes (libvirt reads them for a
disk's capacity, a checkpoint's size, a bitmap check) while `backupBegin` is still
opening the backup's target or scratch node. In `bench/block_graph.py` (rounds of
100 push backups, two threads asking `blockInfo` throughout) the guest died in 6 of
16 rounds; with the begin and the questions taking turns, in none of 16; with only
the look at libvirt's job below (a begin by another process), in 1 of 8.

So a call that makes libvirt read a domain's block nodes (`asking`) waits while
that domain's backup begins (`alone`): in this process by a lock, and for a begin
by another process (a replica) while libvirt says the backup job's data is missing,
which is its state from the job's start until the nodes are open. What is left is
a begin by another process between that look and the question (see the README)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from app.libvirt.errors import backup_data_missing

SETTLE_POLL_SECONDS = 0.02
SETTLE_LIMIT_SECONDS = 10.0  # a begin creating its target files; then ask anyway

_registry = threading.Lock()
_by_domain: dict[str, threading.Lock] = {}  # one per domain UUID this process saw


@contextmanager
def alone(domain_uuid: str) -> Iterator[None]:
    """Held around `backupBegin` (and inside `asking`). The calls run on the host's
    executor threads, so a thread lock."""
    with _registry:
        lock = _by_domain.setdefault(domain_uuid.lower(), threading.Lock())
    with lock:
        yield


@contextmanager
def asking(dom: libvirt.virDomain) -> Iterator[None]:
    """Around a call that reads the domain's block nodes."""
    with alone(dom.UUIDString()):
        _wait_for_a_begin_elsewhere(dom)
        yield


def _wait_for_a_begin_elsewhere(dom: libvirt.virDomain) -> None:
    deadline = time.monotonic() + SETTLE_LIMIT_SECONDS
    while time.monotonic() < deadline:
        try:
            dom.jobStats(0)
            return
        except libvirt.libvirtError as error:
            if not backup_data_missing(error):
                return  # e.g. the domain is off: the question itself will say
        time.sleep(SETTLE_POLL_SECONDS)

"""libvirt's event loop: process-wide by libvirt's design, so registered once,
before the first connection opens, and run on its own daemon thread."""

from __future__ import annotations

import logging
import threading

import libvirt

log = logging.getLogger(__name__)
_lock = threading.Lock()
_thread: threading.Thread | None = None


def _run_forever() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:
            log.exception("libvirt event loop iteration failed")


def ensure_event_loop() -> None:
    global _thread
    with _lock:
        if _thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        # Errors reach us as exceptions; libvirt's default handler would also
        # print each one to stderr, expected ones (a finished job) included.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _thread = threading.Thread(target=_run_forever, name="libvirt-events", daemon=True)
        _thread.start()

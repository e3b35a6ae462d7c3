"""One hypervisor host over libvirt: a connection kept alive with reconnect and
backoff, a bounded executor for the blocking calls, and events fanned out to
subscribers on their own asyncio loops."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import libvirt

from app.errors import DomainNotFound, HostUnreachable
from app.hypervisor import (
    BackupSpec,
    BackupState,
    CheckpointInfo,
    CheckpointSpec,
    ConnectionStatus,
    DomainInfo,
    DomainStopped,
    EventListener,
    HostInfo,
    HostReconnected,
    HypervisorEvent,
    JobCompleted,
    JobStats,
)
from app.libvirt import domains, jobs
from app.libvirt.errors import map_libvirt_error
from app.libvirt.events import ensure_event_loop

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_COUNT = 3


def _alive(conn: libvirt.virConnect) -> bool:
    """The client's own view of its socket (no call to libvirtd)."""
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


class LibvirtHost:
    """`app.hypervisor.Hypervisor` over one libvirt URI."""

    def __init__(self, name: str, uri: str, *, max_workers: int = 4) -> None:
        ensure_event_loop()
        self.name = name
        self.uri = uri
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix=f"libvirt-{name}")
        self._conn: libvirt.virConnect | None = None
        self._callback_ids: list[int] = []
        self._status = ConnectionStatus(connected=False, error="not connected yet")
        self._listeners: dict[int, tuple[asyncio.AbstractEventLoop, EventListener]] = {}
        self._listeners_lock = threading.Lock()
        self._listener_keys = itertools.count()
        self._lost = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: asyncio.Task[None] | None = None

    # -- connection lifecycle -------------------------------------------------

    @property
    def status(self) -> ConnectionStatus:
        return self._status

    async def start(self) -> None:
        """Try to connect once now, then keep the connection up in the background."""
        self._loop = asyncio.get_running_loop()
        await self._connect_once()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"libvirt-{self.name}")

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._close_connection, conn
            )
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _supervise(self) -> None:
        delay = BACKOFF_FIRST_SECONDS
        while True:
            if self._conn is not None:
                await self._lost.wait()
                self._lost.clear()
                delay = BACKOFF_FIRST_SECONDS
                continue
            await asyncio.sleep(delay)
            if await self._connect_once():
                self._emit(HostReconnected(host=self.name))
            else:
                delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    async def _connect_once(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(self._executor, self._open)
        except libvirt.libvirtError as error:
            message = error.get_error_message() or str(error)
            self._status = ConnectionStatus(False, message, datetime.now(UTC))
            log.warning("host %s (%s) unreachable: %s", self.name, self.uri, message)
            return False
        self._status = ConnectionStatus(True, None, datetime.now(UTC), info)
        log.info("host %s connected (%s)", self.name, self.uri)
        return True

    def _open(self) -> HostInfo:
        conn = libvirt.open(self.uri)
        try:
            if not self.uri.startswith(("qemu:///", "test:///")):
                conn.setKeepAlive(KEEPALIVE_INTERVAL_SECONDS, KEEPALIVE_COUNT)
            conn.registerCloseCallback(self._on_close, None)
            self._callback_ids = [
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_job_completed, None
                ),
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
                ),
            ]
            info = HostInfo(_version(conn.getLibVersion()), _version(conn.getVersion()))
        except libvirt.libvirtError:
            conn.close()
            raise
        self._conn = conn
        return info

    def _close_connection(self, conn: libvirt.virConnect) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            for callback_id in self._callback_ids:
                conn.domainEventDeregisterAny(callback_id)
            conn.unregisterCloseCallback()
            conn.close()

    def _on_close(self, conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        # Runs on the libvirt event thread.
        log.warning("host %s connection closed (reason %d)", self.name, reason)
        if self._conn is conn:
            self._conn = None
            self._status = ConnectionStatus(
                False, f"connection closed (reason {reason})", datetime.now(UTC)
            )
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._lost.set)

    # -- events -----------------------------------------------------------------

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        with self._listeners_lock:
            key = next(self._listener_keys)
            self._listeners[key] = (asyncio.get_running_loop(), listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                self._listeners.pop(key, None)

        return unsubscribe

    def _emit(self, event: HypervisorEvent) -> None:
        with self._listeners_lock:
            targets = list(self._listeners.values())
        for loop, listener in targets:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(listener, event)

    def _on_job_completed(
        self, _conn: object, dom: libvirt.virDomain, params: dict[str, Any], _opaque: object
    ) -> None:
        success = params.get("success")
        self._emit(
            JobCompleted(
                host=self.name,
                domain_uuid=dom.UUIDString(),
                success=None if success is None else bool(success),
                errmsg=params.get("errmsg"),
            )
        )

    def _on_lifecycle(
        self, _conn: object, dom: libvirt.virDomain, event: int, _detail: int, _opaque: object
    ) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            self._emit(DomainStopped(host=self.name, domain_uuid=dom.UUIDString()))

    # -- calls ------------------------------------------------------------------

    async def _call(self, fn: Callable[[libvirt.virConnect], T]) -> T:
        conn = self._conn
        if conn is None:
            raise HostUnreachable(f"host {self.name} is disconnected: {self._status.error}")
        loop = asyncio.get_running_loop()
        try:
            # In the caller's context: a line logged in the call names its backup.
            in_context = contextvars.copy_context().run
            return await loop.run_in_executor(self._executor, in_context, fn, conn)
        except libvirt.libvirtError as error:
            if not _alive(conn):
                # The connection died during the call ("End of file while reading
                # data", a system error): an outage, and libvirtd may have carried
                # the call out. The caller waits for the host and looks.
                raise HostUnreachable(
                    f"host {self.name}: connection lost: {error.get_error_message()}"
                ) from error
            raise map_libvirt_error(error, self.name) from error

    async def _on_domain(self, ref: str, fn: Callable[[libvirt.virDomain], T]) -> T:
        def call(conn: libvirt.virConnect) -> T:
            return fn(domains.lookup(conn, ref))

        try:
            return await self._call(call)
        except DomainNotFound as error:
            raise DomainNotFound(
                f"domain {ref} not found on host {self.name}", **error.extra
            ) from error

    async def list_domains(self) -> list[DomainInfo]:
        return await self._call(domains.list_all)

    async def get_domain(self, ref: str) -> DomainInfo:
        return await self._on_domain(ref, domains.describe)

    async def is_active(self, domain_uuid: str) -> bool:
        return await self._on_domain(domain_uuid, lambda dom: bool(dom.isActive()))

    async def backup_begin(
        self,
        domain_uuid: str,
        backup: BackupSpec,
        checkpoint: CheckpointSpec | None,
        *,
        reuse_external: bool = False,
        quiesce: bool = False,
    ) -> None:
        begin = partial(
            jobs.backup_begin,
            backup=backup,
            checkpoint=checkpoint,
            reuse_external=reuse_external,
            quiesce=quiesce,
        )
        await self._on_domain(domain_uuid, begin)

    async def backup_state(self, domain_uuid: str) -> tuple[str, BackupState] | None:
        return await self._on_domain(domain_uuid, jobs.backup_state)

    async def job_stats(self, domain_uuid: str, *, completed: bool = False) -> JobStats:
        return await self._on_domain(domain_uuid, partial(jobs.job_stats, completed=completed))

    async def abort_job(self, domain_uuid: str) -> None:
        await self._on_domain(domain_uuid, jobs.abort)

    async def list_checkpoints(self, domain_uuid: str) -> list[CheckpointInfo]:
        return await self._on_domain(domain_uuid, domains.list_checkpoints)

    async def get_checkpoint(self, domain_uuid: str, name: str) -> CheckpointInfo:
        return await self._on_domain(domain_uuid, partial(domains.get_checkpoint, name=name))

    async def checkpoint_sizes(self, domain_uuid: str, name: str) -> dict[str, int | None]:
        return await self._on_domain(domain_uuid, partial(domains.checkpoint_sizes, name=name))

    async def create_checkpoint(
        self, domain_uuid: str, checkpoint: CheckpointSpec, *, quiesce: bool = False
    ) -> CheckpointInfo:
        create = partial(domains.create_checkpoint, checkpoint=checkpoint, quiesce=quiesce)
        return await self._on_domain(domain_uuid, create)

    async def redefine_checkpoint(self, domain_uuid: str, xml: str) -> None:
        await self._on_domain(domain_uuid, partial(domains.redefine_checkpoint, xml=xml))

    async def delete_checkpoint(
        self, domain_uuid: str, name: str, *, children: bool = False, metadata_only: bool = False
    ) -> None:
        delete = partial(
            domains.delete_checkpoint,
            name=name,
            children=children,
            metadata_only=metadata_only,
        )
        await self._on_domain(domain_uuid, delete)

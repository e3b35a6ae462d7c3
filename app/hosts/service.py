"""Registering and removing hosts: the database row and the live connection."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ACTIVE_STATUSES, Backup, BackupStatus, Host
from app.errors import InvalidState, UriNotAllowed
from app.hosts.registry import LOCAL_HOST, HostRegistry
from app.hosts.schemas import HostCreate, HostOut
from app.hosts.uris import UriRefused, check_host_uri
from app.hypervisor import Hypervisor
from app.redact import redact_paths


def host_out(host: Hypervisor) -> HostOut:
    status = host.status
    return HostOut(
        name=host.name,
        uri=host.uri,
        state="connected" if status.connected else "disconnected",
        libvirt_version=status.info.libvirt_version if status.info else None,
        hypervisor_version=status.info.hypervisor_version if status.info else None,
        # libvirt's reason can quote a path on the service's host: kept in the log only.
        error=None if status.error is None else redact_paths(status.error),
        checked_at=status.checked_at,
    )


async def load_hosts(session: AsyncSession, registry: HostRegistry, local_uri: str) -> None:
    """At start: `local` from settings, then every stored host."""
    await registry.add(LOCAL_HOST, local_uri)
    for row in (await session.scalars(select(Host).order_by(Host.name))).all():
        if row.name != LOCAL_HOST:
            await registry.add(row.name, row.uri)


def allowed_uri(uri: str, *, allow_tcp: bool) -> str:
    """The URI when it is on the allow-list, else 422 `uri-not-allowed`."""
    try:
        return check_host_uri(uri, allow_tcp=allow_tcp)
    except UriRefused as refused:
        reason = str(refused)
        raise UriNotAllowed(
            f"host URI refused: {reason}", errors=[{"field": "body.uri", "message": reason}]
        ) from None


async def add_host(
    session: AsyncSession, registry: HostRegistry, body: HostCreate, *, allow_tcp: bool
) -> Hypervisor:
    allowed_uri(body.uri, allow_tcp=allow_tcp)  # before anything reaches libvirt
    if body.name in registry or await session.get(Host, body.name) is not None:
        raise InvalidState(f"host {body.name} already exists")
    session.add(Host(name=body.name, uri=body.uri))
    await session.flush()
    # A host that cannot connect is still recorded; it shows `disconnected`.
    return await registry.add(body.name, body.uri)


async def remove_host(session: AsyncSession, registry: HostRegistry, name: str) -> None:
    registry.get(name)  # 404 when unknown
    if name == LOCAL_HOST:
        raise InvalidState("host local comes from settings (VMBACKUP_LIBVIRT_URI)")
    busy = await session.scalar(
        select(func.count())
        .select_from(Backup)
        .where(Backup.host == name, Backup.status.in_([*ACTIVE_STATUSES, BackupStatus.QUEUED]))
    )
    if busy:
        raise InvalidState(f"host {name} has {busy} queued or active backups")
    row = await session.get(Host, name)
    if row is not None:
        await session.delete(row)
        await session.flush()
    await registry.remove(name)

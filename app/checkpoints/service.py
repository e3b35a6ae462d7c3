"""Checkpoints from the API side: the stored lineage merged with libvirt's live list."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Iterable

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.checkpoints import repository
from app.checkpoints.lineage import descendants, parents_first
from app.checkpoints.reconcile import job_in_flux
from app.checkpoints.schemas import (
    CheckpointCreate,
    CheckpointDiskOut,
    CheckpointList,
    CheckpointOut,
    CheckpointState,
)
from app.db.base import utcnow
from app.db.models import Checkpoint
from app.errors import (
    CheckpointNotFound,
    DomainNotRunning,
    HypervisorError,
    InvalidRequest,
    InvalidState,
    UnknownDisk,
)
from app.hypervisor import (
    CheckpointDiskSpec,
    CheckpointInfo,
    CheckpointKind,
    CheckpointSpec,
    DomainInfo,
    Hypervisor,
)

Sizes = dict[str, int | None]


def _disk_out(name: str, checkpoint: str, bitmap: str | None, sizes: Sizes) -> CheckpointDiskOut:
    return CheckpointDiskOut.model_validate(
        {"name": name, "checkpoint": checkpoint, "bitmap": bitmap, "size_bytes": sizes.get(name)}
    )


def row_out(row: Checkpoint, *, in_libvirt: bool, sizes: Sizes | None = None) -> CheckpointOut:
    state: CheckpointState = "broken" if row.state == "broken" else "ok"
    if not in_libvirt and state == "ok":
        state = "missing"  # the live view: reconcile redefines it or finds it broken
    return CheckpointOut(
        name=row.name,
        parent=row.parent,
        created_at=row.created_at,
        description=row.description,
        disks=[
            _disk_out(d["name"], d["checkpoint"], d.get("bitmap"), sizes or {}) for d in row.disks
        ],
        backup_id=row.backup_id,
        state=state,
        state_reason=row.state_reason,
        in_libvirt=in_libvirt,
    )


def info_out(
    info: CheckpointInfo, *, backup_id: uuid.UUID | None = None, sizes: Sizes | None = None
) -> CheckpointOut:
    """A checkpoint only libvirt holds (not recorded yet)."""
    return CheckpointOut(
        name=info.name,
        parent=info.parent,
        created_at=info.created_at,
        description=info.description,
        disks=[_disk_out(d.name, d.checkpoint, d.bitmap, sizes or {}) for d in info.disks],
        backup_id=backup_id,
        state="ok",
        in_libvirt=True,
    )


async def list_checkpoints(
    session: AsyncSession, hypervisor: Hypervisor, domain_ref: str
) -> CheckpointList:
    domain = await hypervisor.get_domain(domain_ref)
    rows = await repository.checkpoints(session, hypervisor.name, domain.uuid)
    live = {cp.name: cp for cp in await hypervisor.list_checkpoints(domain.uuid)}
    making = await _made_by_unfinished_backups(session, hypervisor.name, domain.uuid)
    stored = {row.name for row in rows}
    items = [row_out(row, in_libvirt=row.name in live) for row in rows] + [
        info_out(cp, backup_id=making.get(cp.name)) for cp in live.values() if cp.name not in stored
    ]
    return CheckpointList(items=parents_first(items, lambda c: c.name, lambda c: c.parent))


async def get_checkpoint(
    session: AsyncSession, hypervisor: Hypervisor, domain_ref: str, name: str
) -> CheckpointOut:
    domain = await hypervisor.get_domain(domain_ref)
    row = await repository.checkpoint(session, hypervisor.name, domain.uuid, name)
    info = None
    with contextlib.suppress(CheckpointNotFound):
        info = await hypervisor.get_checkpoint(domain.uuid, name)
    if info is None:
        if row is None:
            raise CheckpointNotFound(f"domain {domain.name} has no checkpoint {name}")
        return row_out(row, in_libvirt=False)
    sizes = await _sizes(hypervisor, domain, name)
    if row is None:
        making = await _made_by_unfinished_backups(session, hypervisor.name, domain.uuid)
        return info_out(info, backup_id=making.get(name), sizes=sizes)
    return row_out(row, in_libvirt=True, sizes=sizes)


async def _sizes(hypervisor: Hypervisor, domain: DomainInfo, name: str) -> Sizes | None:
    """Null sizes, not an error, when libvirt cannot tell now: the size query needs
    the domain running and a domain job, which a backup job holds."""
    if not domain.active or await job_in_flux(hypervisor, domain.uuid):
        return None
    try:
        return await hypervisor.checkpoint_sizes(domain.uuid, name)
    except (HypervisorError, CheckpointNotFound):
        return None  # a backup began, or the checkpoint went, meanwhile


async def create_checkpoint(
    session: AsyncSession, hypervisor: Hypervisor, domain_ref: str, body: CheckpointCreate
) -> CheckpointOut:
    domain = await hypervisor.get_domain(domain_ref)
    if not domain.active:
        raise DomainNotRunning(f"domain {domain.name} is {domain.state}")
    spec = checkpoint_spec(domain, body)
    live = {cp.name for cp in await hypervisor.list_checkpoints(domain.uuid)}
    if spec.name in live:
        raise InvalidState(f"domain {domain.name} has a checkpoint {spec.name} already")
    # The row first: the unique name is claimed before libvirt is asked.
    row = Checkpoint(host=hypervisor.name, domain_uuid=domain.uuid, name=spec.name, disks=[])
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as error:
        raise InvalidState(
            f"domain {domain.name} has a recorded checkpoint {spec.name} already"
        ) from error
    info = await hypervisor.create_checkpoint(domain.uuid, spec, quiesce=body.quiesce)
    made = repository.new_row(hypervisor.name, domain.uuid, info)
    for field in ("parent", "created_at", "description", "disks", "xml", "state", "in_libvirt"):
        setattr(row, field, getattr(made, field))
    await session.flush()
    return row_out(row, in_libvirt=True)


def checkpoint_spec(domain: DomainInfo, body: CheckpointCreate) -> CheckpointSpec:
    """Every disk device listed: a bitmap where asked (by default wherever one can
    live), `no` elsewhere. libvirt gives a device left out (a cdrom) none either."""
    disks = {disk.name: disk for disk in domain.disks}
    asked = {d.name: d.checkpoint for d in body.disks} if body.disks is not None else None
    unknown = sorted(set(asked or ()) - set(disks))
    if unknown:
        raise UnknownDisk(
            f"domain {domain.name} has no disk {', '.join(unknown)} "
            f"(its disks: {', '.join(disks) or 'none'})"
        )
    specs = []
    for name, disk in disks.items():
        default: CheckpointKind = "bitmap" if disk.checkpoint_capable else "no"
        kind = default if asked is None else asked.get(name, "no")
        if kind == "bitmap" and not disk.checkpoint_capable:
            raise InvalidRequest(f"disk {name} ({disk.device}, {disk.format}) cannot hold a bitmap")
        if disk.device == "disk":
            specs.append(CheckpointDiskSpec(name, kind))
    if not any(spec.checkpoint == "bitmap" for spec in specs):
        raise InvalidRequest(f"no disk of {domain.name} would get a bitmap")
    name = body.name or f"vmb-{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
    return CheckpointSpec(name=name, description=body.description, disks=tuple(specs))


async def delete_checkpoint(
    session: AsyncSession,
    hypervisor: Hypervisor,
    domain_ref: str,
    name: str,
    *,
    children: bool,
    metadata_only: bool,
) -> None:
    domain = await hypervisor.get_domain(domain_ref)
    rows = {r.name: r for r in await repository.checkpoints(session, hypervisor.name, domain.uuid)}
    live = {cp.name: cp for cp in await hypervisor.list_checkpoints(domain.uuid)}
    if name not in rows and name not in live:
        raise CheckpointNotFound(f"domain {domain.name} has no checkpoint {name}")
    below = _subtree(name, rows, live) if children else []
    await _refuse_in_use(session, hypervisor.name, domain, [name, *below])
    in_libvirt = [n for n in (name, *below) if n in live]
    if in_libvirt and not metadata_only and not domain.active:
        # libvirt: "cannot delete checkpoint for inactive domain" (bitmaps live in QEMU)
        raise DomainNotRunning(
            f"domain {domain.name} is {domain.state}: only its metadata can be deleted"
        )
    if name in live:
        await hypervisor.delete_checkpoint(
            domain.uuid, name, children=children, metadata_only=metadata_only
        )
    else:  # libvirt lost it, maybe not the ones below: delete those, leaves first
        for child in reversed(in_libvirt):
            await hypervisor.delete_checkpoint(domain.uuid, child, metadata_only=metadata_only)
    await _forget(session, hypervisor, domain, name, rows, below)


def _subtree(name: str, rows: dict[str, Checkpoint], live: dict[str, CheckpointInfo]) -> list[str]:
    """Below `name` in either lineage (they differ for a checkpoint made outside)."""
    stored = descendants(name, {n: r.parent for n, r in rows.items()})
    known = descendants(name, {n: cp.parent for n, cp in live.items()})
    return stored + [n for n in known if n not in stored]


async def _refuse_in_use(
    session: AsyncSession, host: str, domain: DomainInfo, names: Iterable[str]
) -> None:
    doomed = set(names)
    for backup in await repository.unfinished_backups(session, host, domain.uuid):
        used = {backup.incremental, backup.checkpoint} & doomed
        if used:
            raise InvalidState(
                f"checkpoint {used.pop()} of {domain.name} is in use by backup {backup.id} "
                f"({backup.status.value})"
            )


async def _forget(
    session: AsyncSession,
    hypervisor: Hypervisor,
    domain: DomainInfo,
    name: str,
    rows: dict[str, Checkpoint],
    below: list[str],
) -> None:
    """The stored lineage after a delete: the subtree gone, or the children
    re-parented as libvirt did it (their redefinable XML with them)."""
    gone = [name, *below]
    await session.execute(
        delete(Checkpoint).where(
            Checkpoint.host == hypervisor.name,
            Checkpoint.domain_uuid == domain.uuid,
            Checkpoint.name.in_(gone),
        )
    )
    deleted = rows.get(name)
    for child in (r for r in rows.values() if r.parent == name and r.name not in gone):
        child.parent = deleted.parent if deleted is not None else None
        with contextlib.suppress(CheckpointNotFound):
            info = await hypervisor.get_checkpoint(domain.uuid, child.name)
            child.parent, child.xml = info.parent, info.xml
    await session.flush()


async def _made_by_unfinished_backups(
    session: AsyncSession, host: str, domain_uuid: str
) -> dict[str, uuid.UUID]:
    backups = await repository.unfinished_backups(session, host, domain_uuid)
    return {b.checkpoint: b.id for b in backups if b.checkpoint is not None}


async def prunable(session: AsyncSession, host: str, domain_uuid: str, keep: int) -> list[str]:
    """The checkpoints to delete, oldest first, so that the newest `keep` made by
    the service's backups remain: each dirty bitmap costs QEMU on every guest
    write and each checkpoint costs every backup start. libvirt merges a deleted
    checkpoint's bitmap into its parent's, so the ones kept stay exact. One made
    outside the service is the user's and stays, as does one an unfinished
    backup uses."""
    rows = await repository.checkpoints(session, host, domain_uuid)
    ours = sorted(
        (r for r in rows if r.backup_id is not None and r.in_libvirt),
        key=lambda r: (r.created_at, r.id),
    )
    busy = {
        name
        for b in await repository.unfinished_backups(session, host, domain_uuid)
        for name in (b.incremental, b.checkpoint)
    }
    return [r.name for r in ours[: max(0, len(ours) - keep)] if r.name not in busy]

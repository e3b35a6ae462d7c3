"""Bring a domain's stored checkpoint lineage and libvirt's checkpoints together.

Three sources: the database (intent and lineage, with each checkpoint's
redefinable XML), libvirt's checkpoint metadata, and the bitmaps QEMU holds.

- In the database, not in libvirt: the metadata was lost (domain undefined and
  defined again, migrated) or the checkpoint was deleted outside the service.
  Redefined from the stored XML with REDEFINE_VALIDATE, parents first: libvirt
  then checks that QEMU has every bitmap, so a checkpoint deleted with its
  bitmap fails there and is marked broken with libvirt's reason.
- In libvirt, not in the database: made outside the service; imported.
- In both: libvirt's parent wins (a deletion outside the service re-parents in
  libvirt), and, while no job runs, each bitmap is probed with
  VIR_DOMAIN_CHECKPOINT_XML_SIZE. `qemu-img info -U` cannot tell: a running
  QEMU writes bitmaps made since it started only when it closes the image.

Needs a running domain: REDEFINE_VALIDATE and the size query need QEMU.
A checkpoint known broken is reported, not retried.

Safe on every backup start: when nothing is wrong it reads (one list, one job
query, one size query per checkpoint with bitmaps: about 4 ms each here) and
writes nothing. It flushes and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from app.checkpoints import repository
from app.checkpoints.schemas import BrokenCheckpoint, ReconcileResult
from app.db.models import Checkpoint
from app.errors import CheckpointNotFound, DomainNotRunning, HypervisorError, InvalidState
from app.hypervisor import CheckpointInfo, DomainInfo, Hypervisor

__all__ = ["ReconcileResult", "reconcile"]


async def reconcile(
    session: AsyncSession, hypervisor: Hypervisor, domain: DomainInfo, *, dry_run: bool = False
) -> ReconcileResult:
    if not domain.active:
        raise DomainNotRunning(
            f"domain {domain.name} is {domain.state}: libvirt validates checkpoint bitmaps "
            "only in a running domain"
        )
    # Read in this order: a backup's runner records its checkpoint before the backup
    # leaves the unfinished statuses, so each checkpoint is seen in one or the other.
    in_flight = {
        b.checkpoint
        for b in await repository.unfinished_backups(session, hypervisor.name, domain.uuid)
    }
    rows = await repository.checkpoints(session, hypervisor.name, domain.uuid)
    live = {cp.name: cp for cp in await hypervisor.list_checkpoints(domain.uuid)}
    lost = await _lost_bitmaps(hypervisor, domain.uuid, list(live.values()))
    run = _Reconciler(session, hypervisor, domain, dry_run=dry_run, present=set(live), lost=lost)
    for row in rows:
        if row.name in live:
            run.check(row, live[row.name])
        else:
            await run.restore(row)
    stored = {row.name for row in rows}
    for cp in live.values():
        if cp.name not in stored and cp.name not in in_flight:
            run.adopt(cp)
    if not dry_run:
        await _flush(session, domain)
    return run.result


async def job_in_flux(hypervisor: Hypervisor, domain_uuid: str) -> bool:
    """Whether a domain job runs, or is starting or ending: libvirt then fails the
    stats query itself ("backup job data missing") rather than answer."""
    try:
        return (await hypervisor.job_stats(domain_uuid)).active
    except HypervisorError:
        return True


async def _lost_bitmaps(
    hypervisor: Hypervisor, domain_uuid: str, live: list[CheckpointInfo]
) -> dict[str, str] | None:
    """Why each checkpoint in libvirt lacks a bitmap in QEMU; None when not probed:
    the size query runs a domain job, which waits behind a backup's (1.4 s seen
    behind a push), and a backup start must stay quick."""
    if await job_in_flux(hypervisor, domain_uuid):
        return None
    lost: dict[str, str] = {}
    for cp in live:
        bitmaps = {d.name: d.bitmap for d in cp.disks if d.checkpoint == "bitmap"}
        if not bitmaps:
            continue
        try:
            sizes = await hypervisor.checkpoint_sizes(domain_uuid, cp.name)
        except (HypervisorError, CheckpointNotFound):
            return None  # a job began, or it went, meanwhile: tell next time
        gone = [f"{bitmaps[disk]!r} of disk {disk}" for disk, size in sizes.items() if size is None]
        if gone:
            lost[cp.name] = f"QEMU has no bitmap {', '.join(gone)} (libvirt reports no size)"
    return lost


async def _flush(session: AsyncSession, domain: DomainInfo) -> None:
    try:
        await session.flush()
    except (IntegrityError, StaleDataError) as error:
        # Another reconcile (or a backup's runner) recorded one of them first, or
        # a deletion (an operator's, or the bound on checkpoints) removed one.
        raise InvalidState(
            f"the checkpoints of {domain.name} changed while being reconciled: retry"
        ) from error


class _Reconciler:
    def __init__(
        self,
        session: AsyncSession,
        hypervisor: Hypervisor,
        domain: DomainInfo,
        *,
        dry_run: bool,
        present: set[str],
        lost: dict[str, str] | None,
    ) -> None:
        self.session = session
        self.hypervisor = hypervisor
        self.domain = domain
        self.dry_run = dry_run
        # In libvirt now, then (dry: as if) with each checkpoint redefined.
        self.present = present
        self.lost = lost  # None: bitmaps not probed this time
        self.result = ReconcileResult()

    def check(self, row: Checkpoint, cp: CheckpointInfo) -> None:
        """A checkpoint in both: bitmaps still there? lineage as libvirt has it?"""
        if self.lost is None and row.state == "broken":
            reason: str | None = row.state_reason or "broken"  # not probed: as recorded
        else:
            reason = None if self.lost is None else self.lost.get(row.name)
        if reason is not None:
            self._broken(row, reason, in_libvirt=True)
            return
        changed = self._set(row, state="ok", state_reason=None, in_libvirt=True)
        if row.parent != cp.parent:
            changed = self._set(row, parent=cp.parent, xml=cp.xml) or changed
        if changed:
            self.result.updated.append(row.name)
        else:
            self.result.unchanged += 1

    async def restore(self, row: Checkpoint) -> None:
        """A recorded checkpoint libvirt does not have: redefine it if it can be."""
        if row.state == "broken":
            # Its bitmap is gone for good: not retried on every backup start.
            self._broken(row, row.state_reason or "broken", in_libvirt=False)
            return
        if row.xml is None:
            self._broken(row, "no stored XML to redefine it from", in_libvirt=False)
            return
        if row.parent is not None and row.parent not in self.present:
            reason = f"its parent {row.parent} is not in libvirt (libvirt redefines under it)"
            self._broken(row, reason, in_libvirt=False)
            return
        if not self.dry_run:
            try:
                await self.hypervisor.redefine_checkpoint(self.domain.uuid, row.xml)
            except HypervisorError as error:
                self._broken(row, error.detail, in_libvirt=False)
                return
            self._set(row, state="ok", state_reason=None, in_libvirt=True)
        self.present.add(row.name)
        self.result.redefined.append(row.name)

    def adopt(self, cp: CheckpointInfo) -> None:
        """A checkpoint made outside the service: record it (no backup holds its data)."""
        self.result.imported.append(cp.name)
        row = repository.new_row(self.hypervisor.name, self.domain.uuid, cp)
        reason = None if self.lost is None else self.lost.get(cp.name)
        if reason is not None:
            row.state, row.state_reason = "broken", reason
            self.result.broken.append(BrokenCheckpoint(name=cp.name, reason=reason))
        if not self.dry_run:
            self.session.add(row)

    def _broken(self, row: Checkpoint, reason: str, *, in_libvirt: bool) -> None:
        self.result.broken.append(BrokenCheckpoint(name=row.name, reason=reason))
        self._set(row, state="broken", state_reason=reason, in_libvirt=in_libvirt)

    def _set(self, row: Checkpoint, **values: Any) -> bool:
        """Assign what differs (not at all when dry); True when something does."""
        changed = {key: value for key, value in values.items() if getattr(row, key) != value}
        if not self.dry_run:
            for key, value in changed.items():
                setattr(row, key, value)
        return bool(changed)

"""A small in-memory `Hypervisor` for unit tests of the worker's logic: one
domain, one backup job at a time, and a switch that takes the host away.

It records every `backup_begin` and `abort_job`, so a test can prove that a
backup was begun once, and lets a test end the job (`finish_job`) or drop the
connection (`disconnect` / `reconnect`) whenever it likes. The real libvirtd
suite proves the same behaviour on QEMU; this one does it in milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.errors import CheckpointNotFound, HostUnreachable, HypervisorError
from app.hypervisor import (
    BackupDiskState,
    BackupSpec,
    BackupState,
    CheckpointDisk,
    CheckpointInfo,
    CheckpointSpec,
    ConnectionStatus,
    DiskInfo,
    DomainInfo,
    EventListener,
    HostInfo,
    HostReconnected,
    JobStats,
)

MiB = 1024 * 1024
DOMAIN_UUID = "6f1c1b8e-1d3e-4a51-9c1e-2b7f0c9d4a10"
DISK = DiskInfo("vda", "disk", "file", "qcow2", "/images/vda.qcow2", 64 * MiB, True)


@dataclass
class FakeHypervisor:
    name: str = "local"
    uri: str = "test:///fake"
    domain: DomainInfo = field(
        default_factory=lambda: DomainInfo("fake", DOMAIN_UUID, "running", (DISK,))
    )
    connected: bool = True
    job: BackupSpec | None = None
    completed: JobStats | None = None
    begun: list[BackupSpec] = field(default_factory=list)
    aborted: int = 0
    checkpoints: dict[str, CheckpointInfo] = field(default_factory=dict)
    listeners: list[EventListener] = field(default_factory=list)

    # -- what a test does -----------------------------------------------------

    def disconnect(self) -> None:
        self.connected = False

    def reconnect(self) -> None:
        self.connected = True
        for listener in self.listeners:
            listener(HostReconnected(self.name))

    def finish_job(self, *, success: bool = True) -> None:
        """The job ends by itself (a push that copied everything)."""
        self.job = None
        self.completed = JobStats(False, success, None, 64 * MiB, 64 * MiB)

    # -- the protocol -----------------------------------------------------------

    @property
    def status(self) -> ConnectionStatus:
        info = HostInfo("9.0.0", "7.2.0")
        return ConnectionStatus(self.connected, None if self.connected else "down", None, info)

    def _reachable(self) -> None:
        if not self.connected:
            raise HostUnreachable(f"host {self.name} is disconnected")

    async def close(self) -> None:
        pass

    async def start(self) -> None:
        pass

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    async def list_domains(self) -> list[DomainInfo]:
        self._reachable()
        return [self.domain]

    async def get_domain(self, ref: str) -> DomainInfo:
        self._reachable()
        return self.domain

    async def is_active(self, domain_uuid: str) -> bool:
        self._reachable()
        return True

    async def backup_begin(
        self,
        domain_uuid: str,
        backup: BackupSpec,
        checkpoint: CheckpointSpec | None,
        *,
        reuse_external: bool = False,
        quiesce: bool = False,
    ) -> None:
        self._reachable()
        if self.job is not None:
            raise HypervisorError("libvirt error 55: another job is running", libvirt_code=55)
        self.job = backup
        self.begun.append(backup)
        if checkpoint is not None:
            self._record(checkpoint)

    def _record(self, checkpoint: CheckpointSpec) -> CheckpointInfo:
        disks = tuple(
            CheckpointDisk(d.name, d.checkpoint, checkpoint.name) for d in checkpoint.disks
        )
        info = CheckpointInfo(
            checkpoint.name, None, datetime.now(UTC), None, disks, "<domaincheckpoint/>"
        )
        self.checkpoints[checkpoint.name] = info
        return info

    async def backup_state(self, domain_uuid: str) -> tuple[str, BackupState] | None:
        self._reachable()
        if self.job is None:
            return None
        disks = tuple(
            BackupDiskState(
                d.name, d.backup, export_name=d.name if self.job.mode == "pull" else None
            )
            for d in self.job.disks
        )
        return "<domainbackup/>", BackupState(
            self.job.mode, self.job.incremental, self.job.server, disks
        )

    async def job_stats(self, domain_uuid: str, *, completed: bool = False) -> JobStats:
        self._reachable()
        if completed:
            return self.completed or JobStats(False)
        if self.job is None:
            return JobStats(False)
        return JobStats(True, disk_total=64 * MiB, disk_processed=MiB)

    async def abort_job(self, domain_uuid: str) -> None:
        self._reachable()
        if self.job is None:
            raise HypervisorError("libvirt error 55: no job is active", libvirt_code=55)
        self.aborted += 1
        self.job = None
        self.completed = JobStats(False, True, "Operation canceled")

    async def list_checkpoints(self, domain_uuid: str) -> list[CheckpointInfo]:
        self._reachable()
        return list(self.checkpoints.values())

    async def get_checkpoint(self, domain_uuid: str, name: str) -> CheckpointInfo:
        self._reachable()
        if name not in self.checkpoints:
            raise CheckpointNotFound(f"no checkpoint {name}")
        return self.checkpoints[name]

    async def checkpoint_sizes(self, domain_uuid: str, name: str) -> dict[str, int | None]:
        self._reachable()
        return {"vda": 0}

    async def create_checkpoint(
        self, domain_uuid: str, checkpoint: CheckpointSpec, *, quiesce: bool = False
    ) -> CheckpointInfo:
        self._reachable()
        return self._record(checkpoint)

    async def redefine_checkpoint(self, domain_uuid: str, xml: str) -> None:
        raise NotImplementedError

    async def delete_checkpoint(
        self, domain_uuid: str, name: str, *, children: bool = False, metadata_only: bool = False
    ) -> None:
        self._reachable()
        if self.checkpoints.pop(name, None) is None:
            raise CheckpointNotFound(f"no checkpoint {name}")

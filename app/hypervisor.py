"""What the service needs from a hypervisor, without importing libvirt.

`app/libvirt/` implements `Hypervisor` with libvirt-python; unit tests fake it.
The value types here are the vocabulary both sides share: specs go in (built from
validated requests), parsed states come out (read from libvirt's XML). No XML
crosses this boundary inward: the adapter builds it from the specs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

BackupMode = Literal["push", "pull"]
DiskBackupMode = Literal["full", "incremental"]
StorageType = Literal["file", "block"]
Transport = Literal["unix", "tcp"]
CheckpointKind = Literal["bitmap", "no"]


@dataclass(frozen=True)
class HostInfo:
    libvirt_version: str
    hypervisor_version: str


@dataclass(frozen=True)
class DiskInfo:
    name: str  # target dev, e.g. "vda"
    device: str  # "disk", "cdrom", ...
    type: str  # "file", "block", "network", ...
    format: str | None  # driver type: "qcow2", "raw", ...
    source: str | None
    capacity_bytes: int
    checkpoint_capable: bool  # qcow2 disk: can hold a persistent dirty bitmap


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: str  # "running", "paused", "shutoff", ...
    disks: tuple[DiskInfo, ...]

    @property
    def active(self) -> bool:
        return self.state in ("running", "paused")


@dataclass(frozen=True)
class DiskBackupSpec:
    name: str
    backup: bool = True
    backupmode: DiskBackupMode | None = None
    type: StorageType = "file"
    target: str | None = None  # push: destination path
    driver: str | None = None  # push: destination format
    scratch: str | None = None  # pull: scratch path


@dataclass(frozen=True)
class NbdServerSpec:
    transport: Transport
    socket: str | None = None  # unix
    name: str | None = None  # tcp host name or address
    port: int | None = None  # tcp
    tls: bool = False


@dataclass(frozen=True)
class BackupSpec:
    """What `<domainbackup>` asks for."""

    mode: BackupMode
    disks: tuple[DiskBackupSpec, ...]
    incremental: str | None = None
    server: NbdServerSpec | None = None


@dataclass(frozen=True)
class CheckpointDiskSpec:
    name: str
    checkpoint: CheckpointKind = "bitmap"


@dataclass(frozen=True)
class CheckpointSpec:
    """What `<domaincheckpoint>` asks for."""

    name: str
    disks: tuple[CheckpointDiskSpec, ...]
    description: str | None = None


@dataclass(frozen=True)
class BackupDiskState:
    """One disk of `virDomainBackupGetXMLDesc`: the actual values libvirt chose."""

    name: str
    backup: bool
    backupmode: DiskBackupMode | None = None
    type: str | None = None
    format: str | None = None
    target: str | None = None
    scratch: str | None = None
    export_name: str | None = None
    export_bitmap: str | None = None


@dataclass(frozen=True)
class BackupState:
    mode: BackupMode
    incremental: str | None
    server: NbdServerSpec | None
    disks: tuple[BackupDiskState, ...]


@dataclass(frozen=True)
class JobStats:
    """A domain job as `virDomainGetJobStats` reports it; absent counters are None."""

    active: bool
    success: bool | None = None  # completed stats only
    errmsg: str | None = None
    disk_total: int | None = None
    disk_processed: int | None = None
    disk_temp_used: int | None = None
    disk_temp_total: int | None = None


@dataclass(frozen=True)
class CheckpointDisk:
    name: str
    checkpoint: CheckpointKind
    bitmap: str | None
    size_bytes: int | None = None


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    parent: str | None
    created_at: datetime
    description: str | None
    disks: tuple[CheckpointDisk, ...]
    xml: str  # redefinable: includes <domain>


@dataclass(frozen=True)
class JobCompleted:
    """VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, as delivered to subscribers."""

    host: str
    domain_uuid: str
    success: bool | None
    errmsg: str | None


@dataclass(frozen=True)
class DomainStopped:
    """The domain shut off or crashed (lifecycle event): its job is gone."""

    host: str
    domain_uuid: str


@dataclass(frozen=True)
class HostReconnected:
    """The connection came back: whatever was followed must be reconciled."""

    host: str


HypervisorEvent = JobCompleted | DomainStopped | HostReconnected
EventListener = Callable[[HypervisorEvent], None]


@dataclass
class ConnectionStatus:
    connected: bool
    error: str | None = None
    checked_at: datetime | None = None
    info: HostInfo | None = field(default=None)


class Hypervisor(Protocol):
    """One hypervisor host. Every method may raise `HostUnreachable`,
    `DomainNotFound` or `HypervisorError` (app.errors)."""

    name: str
    uri: str

    @property
    def status(self) -> ConnectionStatus: ...

    async def close(self) -> None: ...

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """Call `listener` (on the event loop that subscribed) for each event;
        returns the function that unsubscribes."""
        ...

    async def list_domains(self) -> list[DomainInfo]: ...

    async def get_domain(self, ref: str) -> DomainInfo:
        """`ref` is a name or a UUID."""
        ...

    async def is_active(self, domain_uuid: str) -> bool:
        """Running or paused: one cheap call, for the job follower's every tick."""
        ...

    async def backup_begin(
        self,
        domain_uuid: str,
        backup: BackupSpec,
        checkpoint: CheckpointSpec | None,
        *,
        reuse_external: bool = False,
        quiesce: bool = False,
    ) -> None: ...

    async def backup_state(self, domain_uuid: str) -> tuple[str, BackupState] | None:
        """`virDomainBackupGetXMLDesc`: the raw XML and what it says; None when
        the domain has no backup job (it has ended already)."""
        ...

    async def job_stats(self, domain_uuid: str, *, completed: bool = False) -> JobStats: ...

    async def abort_job(self, domain_uuid: str) -> None: ...

    async def list_checkpoints(self, domain_uuid: str) -> list[CheckpointInfo]: ...

    async def get_checkpoint(self, domain_uuid: str, name: str) -> CheckpointInfo: ...

    async def checkpoint_sizes(self, domain_uuid: str, name: str) -> dict[str, int | None]:
        """Bytes changed since the checkpoint, per disk with a bitmap
        (VIR_DOMAIN_CHECKPOINT_XML_SIZE); None for a disk whose bitmap QEMU does
        not have. Needs a running domain and runs a short domain job, which waits
        behind a backup's: ask while no job runs."""
        ...

    async def create_checkpoint(
        self, domain_uuid: str, checkpoint: CheckpointSpec, *, quiesce: bool = False
    ) -> CheckpointInfo: ...

    async def redefine_checkpoint(self, domain_uuid: str, xml: str) -> None: ...

    async def delete_checkpoint(
        self, domain_uuid: str, name: str, *, children: bool = False, metadata_only: bool = False
    ) -> None: ...

"""Planning a backup from a request and the live domain: which disks, which
base, which checkpoint, which paths. Pure decisions; nothing is written here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from app.backups.paths import confine
from app.backups.schemas import BackupCreate, DiskSpecIn, ServerIn
from app.errors import InvalidRequest, UnknownDisk
from app.hypervisor import DiskInfo, DomainInfo
from app.settings import Settings

BACKUP_DEVICES = ("disk",)


@dataclass(frozen=True)
class DiskPlan:
    """One disk's part in a backup; the fields of a `backup_disks` row."""

    name: str
    backup: bool
    backupmode: str | None = None
    bitmap: bool = False
    type: str = "file"
    format: str | None = None
    target: str | None = None
    scratch: str | None = None


@dataclass(frozen=True)
class Base:
    """What the incremental starts from, or why there is none."""

    checkpoint: str | None
    parent_backup_id: uuid.UUID | None = None  # the backup that made `checkpoint`
    fallback_reason: str | None = None


def checkpoint_name(backup_id: uuid.UUID, created_at: datetime) -> str:
    return f"vmb-{created_at:%Y%m%dT%H%M%SZ}-{backup_id.hex[:8]}"


def _backupable(disk: DiskInfo) -> bool:
    return disk.device in BACKUP_DEVICES and disk.source is not None


def select_disks(domain: DomainInfo, requested: list[DiskSpecIn] | None) -> dict[str, DiskSpecIn]:
    """The domain's disks, each with its spec; a disk left out of a given list is not
    backed up. Raises UnknownDisk for a name the domain does not have."""
    known = {disk.name: disk for disk in domain.disks if disk.device in BACKUP_DEVICES}
    if requested is None:
        return {
            name: DiskSpecIn(name=name, backup=_backupable(disk)) for name, disk in known.items()
        }
    unknown = [spec.name for spec in requested if spec.name not in known]
    if unknown:
        raise UnknownDisk(
            f"domain {domain.name} has no disk {', '.join(unknown)} "
            f"(its disks: {', '.join(known) or 'none'})"
        )
    given = {spec.name: spec for spec in requested}
    return {name: given.get(name, DiskSpecIn(name=name, backup=False)) for name in known}


def _storage_type(spec: DiskSpecIn) -> str:
    if spec.type is not None:
        return spec.type
    storage = spec.target or spec.scratch
    return "block" if storage is not None and storage.dev is not None else "file"


def plan_disk(
    spec: DiskSpecIn,
    disk: DiskInfo,
    *,
    request: BackupCreate,
    incremental: bool,
    backup_id: uuid.UUID,
    domain_uuid: str,
    settings: Settings,
) -> DiskPlan:
    if not spec.backup:
        return DiskPlan(spec.name, backup=False)
    backupmode = _backupmode(spec, disk, incremental)
    bitmap = disk.checkpoint_capable
    storage_type = _storage_type(spec)
    if request.mode == "pull":
        scratch = (
            confine(spec.scratch.path, settings.scratch_dir, what="scratch")
            if spec.scratch
            else settings.scratch_dir / f"{backup_id}.{spec.name}.scratch"
        )
        return DiskPlan(spec.name, True, backupmode, bitmap, storage_type, scratch=str(scratch))
    fmt = spec.driver or "qcow2"
    if backupmode == "incremental" and fmt != "qcow2":
        raise InvalidRequest(f"disk {spec.name}: an incremental push backup writes qcow2")
    target = (
        confine(spec.target.path, settings.backups_dir, what="target")
        if spec.target
        else settings.backups_dir / domain_uuid / str(backup_id) / f"{spec.name}.{fmt}"
    )
    return DiskPlan(spec.name, True, backupmode, bitmap, storage_type, fmt, target=str(target))


def _backupmode(spec: DiskSpecIn, disk: DiskInfo, incremental: bool) -> str:
    """A disk follows the backup's kind unless it says otherwise; a disk with no
    bitmap is copied in full even in an incremental backup."""
    if spec.backupmode == "incremental" and not incremental:
        raise InvalidRequest(f"disk {spec.name}: backupmode 'incremental' needs a base")
    if spec.backupmode == "incremental" and not disk.checkpoint_capable:
        raise InvalidRequest(f"disk {spec.name} cannot hold a checkpoint bitmap")
    if spec.backupmode is not None:
        return spec.backupmode
    return "incremental" if incremental and disk.checkpoint_capable else "full"


def check_reuse_external(request: BackupCreate, disks: list[DiskPlan]) -> None:
    """REUSE_EXTERNAL: the caller made the files; they must be there already."""
    if not request.reuse_external:
        return
    for disk in disks:
        path = disk.target or disk.scratch
        if disk.backup and (path is None or not Path(path).exists()):
            raise InvalidRequest(
                f"disk {disk.name}: reuse_external needs an existing file at {path}"
            )


def plan_server(
    server: ServerIn | None, backup_id: uuid.UUID, settings: Settings
) -> dict[str, object]:
    server = server or ServerIn()
    if server.transport == "unix":
        socket = (
            confine(server.socket, settings.socket_root, what="socket")
            if server.socket
            else settings.socket_root / f"{backup_id}.sock"
        )
        return {"transport": "unix", "socket": str(socket)}
    if server.name is None or server.port is None:
        # libvirt 9 cannot pick a port itself ("must specify TCP port for now").
        raise InvalidRequest("server: a tcp export needs 'name' and 'port'")
    # NBD has no authentication of its own: on loopback too, any local user could
    # read the disks for the export's ttl.
    if not server.tls and not settings.allow_plain_tcp_exports:
        raise InvalidRequest(
            f"server: a plain tcp export on {server.name} would let anyone who reaches the "
            "port read the disks: set 'tls': true, use a unix socket, or allow plain TCP "
            "(VMBACKUP_ALLOW_PLAIN_TCP_EXPORTS)"
        )
    return {"transport": "tcp", "name": server.name, "port": server.port, "tls": server.tls}


def nbd_uri(server: dict[str, object], export: str) -> str:
    if server.get("transport") == "unix":
        return f"nbd+unix:///{export}?socket={server['socket']}"
    scheme = "nbds" if server.get("tls") else "nbd"
    host = str(server["name"])
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{scheme}://{host}:{server['port']}/{export}"

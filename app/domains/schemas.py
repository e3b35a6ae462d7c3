from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel

from app.hypervisor import DiskInfo, DomainInfo


class DiskOut(BaseModel):
    name: str
    device: str
    type: str
    format: str | None
    source: str | None
    capacity_bytes: int
    checkpoint_capable: bool

    @classmethod
    def of(cls, disk: DiskInfo) -> DiskOut:
        return cls(
            name=disk.name,
            device=disk.device,
            type=disk.type,
            format=disk.format,
            source=disk.source,
            capacity_bytes=disk.capacity_bytes,
            checkpoint_capable=disk.checkpoint_capable,
        )


class LastBackup(BaseModel):
    id: uuid.UUID
    status: str
    finished_at: datetime | None


class DomainOut(BaseModel):
    name: str
    uuid: str
    state: str
    disks: list[DiskOut]
    last_backup: LastBackup | None

    @classmethod
    def of(cls, domain: DomainInfo, last_backup: LastBackup | None) -> DomainOut:
        return cls(
            name=domain.name,
            uuid=domain.uuid,
            state=domain.state,
            disks=[DiskOut.of(disk) for disk in domain.disks],
            last_backup=last_backup,
        )


class DomainList(BaseModel):
    items: list[DomainOut]

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.names import Name


class HostCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name
    uri: str = Field(
        min_length=1,
        max_length=1024,
        examples=["qemu+tls://kvm1.example/system"],
        description="`qemu+tls://host[:port]/system` or `qemu+ssh://[user@]host[:port]/system` "
        "(`qemu+tcp://` only where VMBACKUP_ALLOW_TCP_HOSTS is set), with no query "
        "parameters; anything else is 422 `uri-not-allowed`, before libvirt is called.",
    )


class HostOut(BaseModel):
    name: str
    uri: str
    state: Literal["connected", "disconnected"]
    libvirt_version: str | None
    hypervisor_version: str | None
    error: str | None
    checked_at: datetime | None


class HostList(BaseModel):
    items: list[HostOut]

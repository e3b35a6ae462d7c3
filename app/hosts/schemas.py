from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.names import Name

# Transports a libvirt QEMU driver URI may use; anything else is refused.
URI_SCHEMES = ("qemu", "qemu+ssh", "qemu+tcp", "qemu+tls", "qemu+unix", "qemu+libssh2", "test")


class HostCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    uri: str = Field(min_length=1, max_length=1024, examples=["qemu+tls://kvm1.example/system"])

    @field_validator("uri")
    @classmethod
    def _libvirt_uri(cls, value: str) -> str:
        scheme, sep, _rest = value.partition("://")
        if not sep or scheme not in URI_SCHEMES:
            raise ValueError(f"must be a libvirt URI with a scheme among {', '.join(URI_SCHEMES)}")
        if any(ch.isspace() for ch in value):
            raise ValueError("must not contain white space")
        return value


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

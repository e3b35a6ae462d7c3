"""Backup request and response bodies (API.md, Backups)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.names import FreeText, Name, PathText


class StrictModel(BaseModel):
    """A request body: no unknown field, and no coercion (`true` is not 1, `1` is
    not `true`, `"5"` is not 5). Request bodies hold no UUID or time, which strict
    mode would refuse as strings."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Storage(StrictModel):
    """`{"file": path}` or `{"dev": path}`, as in libvirt's `<target>`/`<scratch>`."""

    file: PathText | None = None
    dev: PathText | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.file is None) == (self.dev is None):
            raise ValueError("give exactly one of 'file' or 'dev'")
        return self

    @property
    def path(self) -> str:
        return self.file or self.dev or ""


class DiskSpecIn(StrictModel):
    name: Name
    backup: bool = True
    type: Literal["file", "block"] | None = None
    target: Storage | None = None
    driver: Literal["qcow2", "raw"] | None = None
    scratch: Storage | None = None
    backupmode: Literal["full", "incremental"] | None = None

    @model_validator(mode="after")
    def _storage_matches_type(self) -> Self:
        for storage in (self.target, self.scratch):
            if storage is None or self.type is None:
                continue
            if (self.type == "block") != (storage.dev is not None):
                raise ValueError("type 'block' takes {'dev': path}, type 'file' {'file': path}")
        return self


class ServerIn(StrictModel):
    transport: Literal["unix", "tcp"] = "unix"
    socket: PathText | None = Field(default=None, max_length=108)
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.:_-]{1,253}$")
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: bool = False

    @model_validator(mode="after")
    def _fields_of_transport(self) -> Self:
        if self.transport == "unix" and (self.name or self.port or self.tls):
            raise ValueError("'name', 'port' and 'tls' are for transport 'tcp'")
        if self.transport == "tcp" and self.socket:
            raise ValueError("'socket' is for transport 'unix'")
        return self


class CheckpointIn(StrictModel):
    name: Name | None = None
    description: FreeText | None = None


class BackupCreate(StrictModel):
    mode: Literal["push", "pull"] = "push"
    kind: Literal["full", "incremental", "auto"] = "auto"
    incremental: Name | None = None
    checkpoint: bool | CheckpointIn = True
    disks: list[DiskSpecIn] | None = Field(default=None, min_length=1, max_length=64)
    server: ServerIn | None = None
    quiesce: bool = False
    reuse_external: bool = False
    ttl_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    description: FreeText | None = None
    verify: bool = Field(
        default=False,
        description="push only: record each disk's content digest as the backup completes, "
        "so `POST /v1/backups/{id}/verify` can later prove the files unchanged",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.incremental is not None and self.kind == "full":
            raise ValueError("'incremental' names a base: it cannot go with kind 'full'")
        if self.mode == "push" and (self.server is not None or self.ttl_seconds is not None):
            raise ValueError("'server' and 'ttl_seconds' are for mode 'pull'")
        if self.mode == "pull" and self.verify:
            raise ValueError("'verify' is for mode 'push': a pull backup's data is with its client")
        for disk in self.disks or []:
            if self.mode == "push" and disk.scratch is not None:
                raise ValueError(f"disk {disk.name}: 'scratch' is for mode 'pull'")
            if self.mode == "pull" and (disk.target is not None or disk.driver is not None):
                raise ValueError(f"disk {disk.name}: 'target' and 'driver' are for mode 'push'")
        names = [disk.name for disk in self.disks or []]
        if len(names) != len(set(names)):
            raise ValueError("a disk is named twice")
        return self

    @property
    def effective_kind(self) -> str:
        return "incremental" if self.incremental is not None else self.kind


class ProgressOut(BaseModel):
    bytes_total: int | None
    bytes_processed: int | None
    temp_used: int | None
    temp_total: int | None
    updated_at: datetime | None


class DiskOut(BaseModel):
    name: str
    backup: bool
    backupmode: str | None
    type: str | None
    format: str | None
    target: str | None
    scratch: str | None
    export: str | None
    export_bitmap: str | None
    nbd_uri: str | None
    bytes: int | None


class DomainRef(BaseModel):
    name: str
    uuid: str


class ErrorOut(BaseModel):
    code: str
    message: str

    @classmethod
    def of(cls, code: str | None, message: str | None) -> ErrorOut | None:
        return None if code is None else cls(code=code, message=message or "")


class VerificationOut(BaseModel):
    status: Literal["unverified", "running", "ok", "corrupt"]
    checked_at: datetime | None
    detail: str | None


class BackupOut(BaseModel):
    id: uuid.UUID
    host: str
    domain: DomainRef
    mode: str
    kind: str
    incremental: str | None
    checkpoint: str | None
    fallback_reason: str | None
    status: str
    progress: ProgressOut
    disks: list[DiskOut]
    server: dict[str, Any] | None
    libvirt_xml: str | None
    error: ErrorOut | None
    description: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    policy_id: uuid.UUID | None = None  # the policy whose run made it
    verification: VerificationOut | None = None


class BackupList(BaseModel):
    items: list[BackupOut]
    next_cursor: str | None


class LinkOut(BaseModel):
    backup_id: uuid.UUID
    kind: str
    checkpoint: str | None
    file: str | None
    format: str | None


class ChainOut(BaseModel):
    disks: dict[str, list[LinkOut]]

"""Checkpoint request and response bodies (API.md, Checkpoints)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.names import FreeText, Name

CheckpointState = Literal["ok", "missing", "broken"]


class CheckpointDiskIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name
    checkpoint: Literal["bitmap", "no"] = "bitmap"


class CheckpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name | None = None
    description: FreeText | None = None
    disks: list[CheckpointDiskIn] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="A disk of the domain left out gets no bitmap (as libvirt does).",
    )
    quiesce: bool = Field(
        default=False,
        description="Freeze the guest's file systems through its agent while the checkpoint "
        "is taken; a domain without a guest agent answers 409 `operation-unsupported`.",
    )

    @model_validator(mode="after")
    def _disks_named_once(self) -> Self:
        names = [disk.name for disk in self.disks or []]
        if len(names) != len(set(names)):
            raise ValueError("a disk is named twice")
        return self


class CheckpointDiskOut(BaseModel):
    name: str
    checkpoint: Literal["bitmap", "no"]
    bitmap: str | None
    size_bytes: int | None = Field(
        default=None,
        description="Bytes changed on the disk since the checkpoint, as libvirt reports it; "
        "only on a single checkpoint of a running domain with no backup job, else null.",
    )


class CheckpointOut(BaseModel):
    name: str
    parent: str | None
    created_at: datetime
    description: str | None
    disks: list[CheckpointDiskOut]
    backup_id: uuid.UUID | None
    state: CheckpointState = Field(
        description="`missing`: recorded but not in libvirt (reconcile redefines it); "
        "`broken`: its bitmap is gone, it cannot be a base again."
    )
    state_reason: str | None = None
    in_libvirt: bool


class CheckpointList(BaseModel):
    items: list[CheckpointOut]


class BrokenCheckpoint(BaseModel):
    name: str
    reason: str


class ReconcileResult(BaseModel):
    """What a reconcile did (or, dry, would do). A checkpoint is in one of the lists
    or counted as unchanged; one imported with its bitmap gone is also broken."""

    redefined: list[str] = Field(
        default_factory=list,
        description="Redefined in libvirt from the stored XML. Dry: would be tried "
        "(libvirt checks the bitmaps only when it really redefines).",
    )
    imported: list[str] = Field(
        default_factory=list, description="Found in libvirt, made outside the service."
    )
    updated: list[str] = Field(
        default_factory=list,
        description="Stored lineage brought in line with libvirt: a parent deleted outside "
        "the service, or a broken checkpoint whose bitmaps are back.",
    )
    broken: list[BrokenCheckpoint] = Field(default_factory=list)
    unchanged: int = 0

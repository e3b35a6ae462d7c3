from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.backups.schemas import ErrorOut, StrictModel
from app.names import Name


class RestoreCreate(StrictModel):
    disks: list[Name] | None = Field(default=None, min_length=1, max_length=64)
    format: Literal["qcow2", "raw"] = "qcow2"


class RestoreDiskOut(BaseModel):
    name: str
    file: str
    format: str
    bytes: int | None


class RestoreOut(BaseModel):
    id: uuid.UUID
    backup_id: uuid.UUID
    status: str
    format: str
    disks: list[RestoreDiskOut]
    error: ErrorOut | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

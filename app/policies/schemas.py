"""Policy request and response bodies (API.md, Policies)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator

from app.backups.schemas import BackupCreate, DiskSpecIn, DomainRef, StrictModel
from app.names import Name
from app.policies.schedule import valid_cron, valid_timezone


class Selector(StrictModel):
    host: Name = "local"
    domains: list[Name] | None = Field(
        default=None, min_length=1, max_length=1000, description="names or UUIDs; null: all"
    )
    exclude: list[Name] = Field(default_factory=list, max_length=1000)


class Schedule(StrictModel):
    cron: str = Field(
        max_length=128,
        examples=["0 2 * * *"],
        description="five fields, or six with seconds last (croniter)",
    )
    timezone: str = Field(default="UTC", max_length=64, examples=["Europe/Berlin"])

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not valid_cron(value):
            raise ValueError("not a cron expression croniter reads")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if not valid_timezone(value):
            raise ValueError("not an IANA time zone")
        return value


class PolicyBackup(StrictModel):
    """What each run asks for: a backup request's fields, kind `auto`."""

    mode: Literal["push", "pull"] = "push"
    disks: list[DiskSpecIn] | None = Field(default=None, min_length=1, max_length=64)
    quiesce: bool = False
    ttl_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    description: str | None = Field(default=None, max_length=1024)

    def request(self, kind: Literal["full", "auto"], *, verify: bool = False) -> BackupCreate:
        return BackupCreate(
            mode=self.mode,
            kind=kind,
            verify=verify and self.mode == "push",
            disks=self.disks,
            quiesce=self.quiesce,
            ttl_seconds=self.ttl_seconds,
            description=self.description,
        )

    @model_validator(mode="after")
    def _valid_request(self) -> Self:
        self.request("auto")  # the same rules as a backup request
        return self


class FullEvery(StrictModel):
    """A new full backup after this many incrementals, or after this many days."""

    incrementals: int | None = Field(default=None, ge=0, le=10_000)
    days: int | None = Field(default=None, ge=1, le=3650)

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.incrementals is None) == (self.days is None):
            raise ValueError("give exactly one of 'incrementals' or 'days'")
        return self


class Retention(StrictModel):
    last: int | None = Field(default=None, ge=1, le=10_000)
    daily: int | None = Field(default=None, ge=0, le=10_000)
    weekly: int | None = Field(default=None, ge=0, le=10_000)
    monthly: int | None = Field(default=None, ge=0, le=10_000)


class PolicyCreate(StrictModel):
    name: Name
    enabled: bool = True
    selector: Selector = Field(default_factory=Selector)
    schedule: Schedule
    backup: PolicyBackup = Field(default_factory=PolicyBackup)
    full_every: FullEvery | None = None
    retention: Retention | None = None
    verify: bool = False


class PolicyUpdate(StrictModel):
    """PATCH: the fields given replace the policy's; the others stay."""

    name: Name | None = None
    enabled: bool | None = None
    selector: Selector | None = None
    schedule: Schedule | None = None
    backup: PolicyBackup | None = None
    full_every: FullEvery | None = None
    retention: Retention | None = None
    verify: bool | None = None


class PolicyOut(BaseModel):
    id: uuid.UUID
    name: str
    enabled: bool
    selector: Selector
    schedule: Schedule
    backup: PolicyBackup
    full_every: FullEvery | None
    retention: Retention | None
    verify: bool
    next_run_at: datetime | None
    created_at: datetime


class PolicyList(BaseModel):
    items: list[PolicyOut]
    next_cursor: str | None = None


class PolicyRunOut(BaseModel):
    id: uuid.UUID
    domain: DomainRef
    scheduled_for: datetime
    backup_id: uuid.UUID | None
    skipped: str | None


class PolicyRunList(BaseModel):
    items: list[PolicyRunOut]
    next_cursor: str | None

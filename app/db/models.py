"""Tables. API schemas are separate pydantic models (app/*/schemas.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    or_,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

from app.db.base import Base, utcnow

# SQLite autoincrements only an INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class BackupStatus(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    READY = "ready"
    FINISHING = "finishing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({BackupStatus.SUCCEEDED, BackupStatus.FAILED, BackupStatus.CANCELLED})
# A domain runs at most one backup in these (libvirt's rule, enforced by an index).
ACTIVE_STATUSES = (
    BackupStatus.STARTING,
    BackupStatus.RUNNING,
    BackupStatus.READY,
    BackupStatus.FINISHING,
)
# `end_action` of a backup failed by a host outage past the limit: the pool
# aborts its job and drops its checkpoint once the host is back, then sets it
# to ABORTED_LATE. Until then no other backup of the domain starts.
ABORT_LATER = "abort-later"
ABORTED_LATE = "aborted-late"
VERIFICATION_UNVERIFIED = "unverified"
VERIFICATION_RUNNING = "running"
VERIFICATION_OK = "ok"
VERIFICATION_CORRUPT = "corrupt"
_ACTIVE_SQL = text("status IN ('starting', 'running', 'ready', 'finishing')")


class RestoreStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _enum(cls: type[StrEnum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )


class Host(Base):
    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    uri: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Backup(Base):
    __tablename__ = "backups"
    __table_args__ = (
        Index("ix_backups_created_at_id", "created_at", "id"),
        Index("ix_backups_domain_created_at", "host", "domain_uuid", "created_at"),
        Index("ix_backups_status_created_at", "status", "created_at"),
        Index("ix_backups_parent_backup_id", "parent_backup_id"),
        Index(
            "uq_backups_one_active_per_domain",
            "host",
            "domain_uuid",
            unique=True,
            sqlite_where=_ACTIVE_SQL,
            postgresql_where=_ACTIVE_SQL,
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    host: Mapped[str] = mapped_column(String(64))
    domain_uuid: Mapped[str] = mapped_column(String(36))
    domain_name: Mapped[str] = mapped_column(String(255))
    mode: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(16))
    incremental: Mapped[str | None] = mapped_column(String(64))
    # What the request asked for: "auto" when the base is chosen as the backup
    # starts (so a backup queued behind another builds on it), else the kind.
    requested_kind: Mapped[str | None] = mapped_column(String(16))
    # The policy whose scheduled (or run-now) run made this backup; retention of
    # that policy may prune it, nothing else's does.
    policy_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("policies.id", ondelete="SET NULL"), index=True
    )
    # The backup whose checkpoint `incremental` names: the previous link of this
    # backup's chains (checkpoints can be deleted and re-parented; backups cannot).
    parent_backup_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("backups.id"))
    checkpoint: Mapped[str | None] = mapped_column(String(64))
    checkpoint_description: Mapped[str | None] = mapped_column(Text)
    fallback_reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[BackupStatus] = mapped_column(
        _enum(BackupStatus, "backup_status"), default=BackupStatus.QUEUED
    )
    quiesce: Mapped[bool] = mapped_column(Boolean, default=False)
    reuse_external: Mapped[bool] = mapped_column(Boolean, default=False)
    ttl_seconds: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(Text)
    server: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    libvirt_xml: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # The action the service itself took to end the job: libvirt reports an
    # aborted pull as completed, so the outcome comes from here.
    end_action: Mapped[str | None] = mapped_column(String(16))
    bytes_total: Mapped[int | None] = mapped_column(BigInteger)
    bytes_processed: Mapped[int | None] = mapped_column(BigInteger)
    temp_used: Mapped[int | None] = mapped_column(BigInteger)
    temp_total: Mapped[int | None] = mapped_column(BigInteger)
    progress_updated_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    lease_holder: Mapped[str | None] = mapped_column(String(128))
    lease_epoch: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None]
    # Verification: `verify` asks for each disk's content digest (SHA-256 of the
    # disk as its chain reads it) to be recorded when the push completes; a later
    # verification re-reads the chain against it. A corrupt backup is never a base.
    verify: Mapped[bool] = mapped_column(Boolean, default=False)
    digests: Mapped[dict[str, str] | None] = mapped_column(JSON)
    verification_status: Mapped[str] = mapped_column(
        String(16), default=VERIFICATION_UNVERIFIED, index=True
    )
    verification_checked_at: Mapped[datetime | None]
    verification_detail: Mapped[str | None] = mapped_column(Text)
    # The worker running a requested verification, until when (it is rerunnable).
    verification_holder: Mapped[str | None] = mapped_column(String(128))
    verification_expires_at: Mapped[datetime | None]

    @classmethod
    def domain_is(cls, ref: str) -> ColumnElement[bool]:
        """The backup's domain, named by name or UUID (the API takes either)."""
        return or_(cls.domain_uuid == ref, cls.domain_name == ref)

    disks: Mapped[list[BackupDisk]] = relationship(
        back_populates="backup_row",
        lazy="raise",
        order_by="BackupDisk.position",
        cascade="all, delete-orphan",
    )


class BackupDisk(Base):
    __tablename__ = "backup_disks"

    backup_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("backups.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    backup: Mapped[bool] = mapped_column(Boolean, default=True)
    backupmode: Mapped[str | None] = mapped_column(String(16))
    # Whether the backup's checkpoint gives this disk a dirty bitmap (planned).
    bitmap: Mapped[bool] = mapped_column(Boolean, default=False)
    type: Mapped[str | None] = mapped_column(String(16))
    format: Mapped[str | None] = mapped_column(String(16))
    target: Mapped[str | None] = mapped_column(Text)
    scratch: Mapped[str | None] = mapped_column(Text)
    export_name: Mapped[str | None] = mapped_column(String(255))
    export_bitmap: Mapped[str | None] = mapped_column(String(255))
    nbd_uri: Mapped[str | None] = mapped_column(Text)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Push incrementals: the previous backup's file this one's qcow2 is re-pointed at.
    backing_file: Mapped[str | None] = mapped_column(Text)
    # The service had libvirt make `target` (checked absent just before): only
    # then is the file this backup's to delete. A reuse_external file is its maker's.
    owns_target: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # What the backup is expected to write for this disk (capacity, or the
    # base checkpoint's size), checked against free space before it starts.
    estimated_bytes: Mapped[int | None] = mapped_column(BigInteger)

    backup_row: Mapped[Backup] = relationship(back_populates="disks", lazy="raise")


class BackupEvent(Base):
    """Every status change and progress step: the audit trail and the SSE feed."""

    __tablename__ = "backup_events"
    # Ids are SSE ids, so never reused: SQLite reuses deleted rowids without AUTOINCREMENT.
    __table_args__ = (
        Index("ix_backup_events_backup_id_id", "backup_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    backup_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("backups.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    previous_status: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("host", "domain_uuid", "name"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(64))
    domain_uuid: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(64))
    parent: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    description: Mapped[str | None] = mapped_column(Text)
    disks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # The full redefinable XML (with <domain>), to recreate lost libvirt metadata.
    xml: Mapped[str | None] = mapped_column(Text)
    backup_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("backups.id", ondelete="SET NULL")
    )
    state: Mapped[str] = mapped_column(String(16), default="ok")
    state_reason: Mapped[str | None] = mapped_column(Text)
    in_libvirt: Mapped[bool] = mapped_column(Boolean, default=True)


class Restore(Base):
    __tablename__ = "restores"
    __table_args__ = (Index("ix_restores_status_created_at", "status", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    backup_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("backups.id", ondelete="CASCADE"))
    status: Mapped[RestoreStatus] = mapped_column(
        _enum(RestoreStatus, "restore_status"), default=RestoreStatus.QUEUED
    )
    format: Mapped[str] = mapped_column(String(16))
    disks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_holder: Mapped[str | None] = mapped_column(String(128))
    lease_epoch: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None]


class IdempotencyKey(Base):
    """A key reserved by a request (the token's digest and the client's key), then
    its answer."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    principal: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    # Null while the request that reserved the key is in progress.
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    location: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A live worker pool (one per process): its heartbeat tells the others,
    and /readyz, that it is alive; leases it holds expire if it stops."""

    __tablename__ = "workers"

    holder: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class Policy(Base):
    """A schedule of backups for a selection of domains (API.md, Policies). The
    scheduler creates each due run once: the replica whose guarded UPDATE moves
    `next_run_at` on owns that slot."""

    __tablename__ = "policies"
    __table_args__ = (Index("ix_policies_enabled_next_run_at", "enabled", "next_run_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    host: Mapped[str] = mapped_column(String(64))
    domains: Mapped[list[str] | None] = mapped_column(JSON)  # None: every domain of the host
    exclude: Mapped[list[str]] = mapped_column(JSON, default=list)
    cron: Mapped[str] = mapped_column(String(128))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    backup: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # a BackupCreate body
    full_every: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    retention: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    verify: Mapped[bool] = mapped_column(Boolean, default=False)
    next_run_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PolicyRun(Base):
    """One run of a policy for one domain: the backup it made, or why it made none.
    Unique per (policy, domain, scheduled time): a slot runs once, whichever
    replica sees it due first."""

    __tablename__ = "policy_runs"
    __table_args__ = (
        UniqueConstraint("policy_id", "domain_uuid", "scheduled_for"),
        Index("ix_policy_runs_policy_id_created_at", "policy_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    policy_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"))
    domain_uuid: Mapped[str] = mapped_column(String(64))
    domain_name: Mapped[str] = mapped_column(String(255))
    scheduled_for: Mapped[datetime]
    backup_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("backups.id", ondelete="SET NULL")
    )
    skipped: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

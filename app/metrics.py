"""Prometheus metrics. Request metrics are counted in-process; everything about
backups is read from the database at scrape time, so every replica reports the
same truth and nothing is lost at a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Receive, Scope, Send

from app.db.models import (
    VERIFICATION_CORRUPT,
    Backup,
    BackupDisk,
    BackupStatus,
    Policy,
    PolicyRun,
)
from app.hosts.registry import HostRegistry


class RequestMetrics:
    """An ASGI middleware counting requests by route template (not raw path:
    ids would make one series per backup)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "vmbackup_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=registry,
        )
        self.durations = Histogram(
            "vmbackup_http_request_duration_seconds",
            "HTTP request durations",
            ["method", "route"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: dict[str, object]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])  # type: ignore[call-overload]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)  # type: ignore[arg-type]
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(scope["method"], route, str(status)).inc()
            self.durations.labels(scope["method"], route).observe(time.perf_counter() - started)


@dataclass(eq=False)  # a registry keys collectors by identity
class Snapshot(Collector):
    """Backup figures read once per scrape."""

    by_status: dict[str, int] = field(default_factory=dict)
    bytes_by_domain: dict[tuple[str, str], int] = field(default_factory=dict)
    last_success: dict[tuple[str, str], float] = field(default_factory=dict)
    last_duration: dict[tuple[str, str], float] = field(default_factory=dict)
    hosts_up: dict[str, bool] = field(default_factory=dict)
    policies: dict[str, PolicyFigures] = field(default_factory=dict)
    corrupt: int = 0

    def collect(self) -> Iterator[Metric]:
        backups = GaugeMetricFamily("vmbackup_backups", "Backups by status", labels=["status"])
        for status in BackupStatus:
            backups.add_metric([status.value], self.by_status.get(status.value, 0))
        yield backups
        yield _per_domain(
            "vmbackup_backup_bytes", "Bytes stored by succeeded backups", self.bytes_by_domain
        )
        yield _per_domain(
            "vmbackup_last_success_timestamp_seconds",
            "When the newest succeeded backup of a domain ended (for RPO alerts)",
            self.last_success,
        )
        yield _per_domain(
            "vmbackup_last_backup_duration_seconds",
            "Duration of the newest succeeded backup of a domain",
            self.last_duration,
        )
        up = GaugeMetricFamily(
            "vmbackup_host_up", "1 when the host's libvirt answers", labels=["host"]
        )
        for host, connected in sorted(self.hosts_up.items()):
            up.add_metric([host], 1 if connected else 0)
        yield up
        yield GaugeMetricFamily(
            "vmbackup_backups_corrupt",
            "Backups whose verification found their files changed or damaged",
            value=self.corrupt,
        )
        yield from _per_policy(self.policies)


@dataclass(frozen=True)
class PolicyFigures:
    next_run: float | None
    last_success: float | None
    skipped_runs: int


def _per_policy(policies: Mapping[str, PolicyFigures]) -> Iterator[Metric]:
    next_run = GaugeMetricFamily(
        "vmbackup_policy_next_run_timestamp_seconds", "When a policy runs next", labels=["policy"]
    )
    last = GaugeMetricFamily(
        "vmbackup_policy_last_success_timestamp_seconds",
        "When the newest succeeded backup a policy made ended",
        labels=["policy"],
    )
    skipped = GaugeMetricFamily(
        "vmbackup_policy_skipped_runs", "Runs of a policy that made no backup", labels=["policy"]
    )
    for name, figures in sorted(policies.items()):
        if figures.next_run is not None:
            next_run.add_metric([name], figures.next_run)
        if figures.last_success is not None:
            last.add_metric([name], figures.last_success)
        skipped.add_metric([name], figures.skipped_runs)
    yield from (next_run, last, skipped)


def _per_domain(name: str, doc: str, values: Mapping[tuple[str, str], float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["host", "domain"])
    for (host, domain), value in sorted(values.items()):
        family.add_metric([host, domain], value)
    return family


async def snapshot(session: AsyncSession, hosts: HostRegistry) -> Snapshot:
    succeeded = Backup.status == BackupStatus.SUCCEEDED
    by_status = await session.execute(select(Backup.status, func.count()).group_by(Backup.status))
    stored = await session.execute(
        select(Backup.host, Backup.domain_name, func.coalesce(func.sum(BackupDisk.bytes), 0))
        .join(BackupDisk, BackupDisk.backup_id == Backup.id)
        .where(succeeded)
        .group_by(Backup.host, Backup.domain_name)
    )
    newest = (
        select(Backup.host, Backup.domain_name, func.max(Backup.finished_at).label("finished_at"))
        .where(succeeded)
        .group_by(Backup.host, Backup.domain_name)
        .subquery()
    )
    last = await session.execute(
        select(Backup.host, Backup.domain_name, Backup.started_at, Backup.finished_at).join(
            newest,
            (Backup.host == newest.c.host)
            & (Backup.domain_name == newest.c.domain_name)
            & (Backup.finished_at == newest.c.finished_at),
        )
    )
    result = Snapshot(
        by_status={status.value: count for status, count in by_status},
        bytes_by_domain={(h, d): int(total or 0) for h, d, total in stored},
        hosts_up={host.name: host.status.connected for host in hosts},
    )
    result.policies = await _policy_figures(session)
    corrupt = Backup.verification_status == VERIFICATION_CORRUPT
    result.corrupt = int(await session.scalar(select(func.count()).where(corrupt)) or 0)
    for host, domain, started_at, finished_at in last:
        if finished_at is None:  # excluded by the join; the type does not know
            continue
        result.last_success[(host, domain)] = finished_at.timestamp()
        if started_at is not None:
            result.last_duration[(host, domain)] = (finished_at - started_at).total_seconds()
    return result


async def _policy_figures(session: AsyncSession) -> dict[str, PolicyFigures]:
    last_success = dict(
        (
            await session.execute(
                select(Backup.policy_id, func.max(Backup.finished_at))
                .where(Backup.status == BackupStatus.SUCCEEDED, Backup.policy_id.is_not(None))
                .group_by(Backup.policy_id)
            )
        ).all()
    )
    skipped = dict(
        (
            await session.execute(
                select(PolicyRun.policy_id, func.count())
                .where(PolicyRun.skipped.is_not(None))
                .group_by(PolicyRun.policy_id)
            )
        ).all()
    )
    figures = {}
    for policy_id, name, next_run_at in await session.execute(
        select(Policy.id, Policy.name, Policy.next_run_at)
    ):
        success = last_success.get(policy_id)
        figures[name] = PolicyFigures(
            next_run=next_run_at.timestamp() if next_run_at else None,
            last_success=success.timestamp() if success else None,
            skipped_runs=skipped.get(policy_id, 0),
        )
    return figures


def render(request_registry: CollectorRegistry, figures: Snapshot) -> bytes:
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(figures)
    return generate_latest(request_registry) + generate_latest(scrape)

"""What the running app holds: built once in the lifespan, reached through
dependencies (never module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from app.backups.events import StreamSlots
from app.db.session import Database
from app.hosts.registry import HostRegistry
from app.settings import Settings

if TYPE_CHECKING:
    from app.worker.pool import WorkerPool


@dataclass
class AppState:
    settings: Settings
    database: Database
    hosts: HostRegistry
    request_metrics: CollectorRegistry
    pool: WorkerPool | None = None
    streams: StreamSlots = field(default_factory=StreamSlots)

"""Jinja filters. static/status.js formats the same way (its `ago`, `size` and
`progressOf`), so a value the stream updates reads as the server rendered it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.backups.schemas import BackupOut

# The default RPO of deploy/prometheus/vmbackup-rules.yml: older successes show stale.
DEFAULT_RPO_SECONDS = 26 * 3600
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(value: int | None) -> str:
    if value is None:
        return "-"
    amount, unit = float(value), 0
    while amount >= 1024 and unit < len(_UNITS) - 1:
        amount, unit = amount / 1024, unit + 1
    return f"{value} B" if unit == 0 else f"{amount:.1f} {_UNITS[unit]}"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours == 0:
        return f"{minutes} min"
    if days == 0:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def ago(at: datetime | None, now: datetime) -> str:
    return "never" if at is None else f"{duration((now - at).total_seconds())} ago"


def stale(at: datetime | None, now: datetime) -> bool:
    return at is None or (now - at).total_seconds() > DEFAULT_RPO_SECONDS


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    what: str  # what is counted: data copied, or a pull export's scratch space used

    @property
    def percent(self) -> int:
        return min(100, self.done * 100 // self.total) if self.total else 0

    @property
    def text(self) -> str:
        return f"{self.what} {size(self.done)} of {size(self.total)} ({self.percent}%)"


def progress(backup: BackupOut) -> Progress | None:
    p = backup.progress
    # A ready pull export copies nothing itself: its scratch fills as the guest writes.
    if backup.status == "ready" and p.temp_total:
        return Progress(p.temp_used or 0, p.temp_total, "scratch used")
    if p.bytes_total:
        return Progress(p.bytes_processed or 0, p.bytes_total, "copied")
    return None

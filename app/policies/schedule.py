"""When a policy runs next: a cron expression (five fields, or six with seconds
last) read by croniter in the policy's time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter


def valid_cron(expression: str) -> bool:
    return bool(croniter.is_valid(expression))


def valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def next_run(cron: str, timezone: str, after: datetime) -> datetime:
    """The first slot strictly after `after`, in UTC. The zone matters for
    schedules such as "every day at 02:00", which follow daylight saving time."""
    local = after.astimezone(ZoneInfo(timezone))
    slot: datetime = croniter(cron, local).get_next(datetime)
    return slot.astimezone(UTC)

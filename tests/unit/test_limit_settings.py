"""The limits are settings with sane defaults, checked against each other at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_the_default_pull_ttl_is_within_the_bound_by_default() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.default_pull_ttl_seconds <= settings.max_pull_ttl_seconds
    assert settings.allow_plain_tcp_exports is False


def test_a_default_pull_ttl_above_the_bound_stops_the_start() -> None:
    with pytest.raises(ValidationError, match="exceeds MAX_PULL_TTL_SECONDS"):
        Settings(default_pull_ttl_seconds=7200, max_pull_ttl_seconds=3600)


@pytest.mark.parametrize(
    "field",
    ["max_queued_backups_per_domain", "max_queued_backups_per_host", "max_streams_per_token"],
)
def test_a_limit_of_zero_is_refused(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: 0})  # type: ignore[arg-type]

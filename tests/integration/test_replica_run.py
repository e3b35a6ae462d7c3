"""The big replica run of issue 7 (tests/support/replica_run.py): two replicas
on PostgreSQL, 100 push backups (full and auto) over 10 domains POSTed through
either, one replica `kill -9`ed midway and started again; every backup succeeds
exactly once, never two active on one domain, and each backup's data equals its
disk. About a minute here; bench/replicas.py runs the same and prints figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings
from tests.support.replica_run import patterned_domains, run_replicas

pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]
BACKUPS = 100
DOMAINS = 10


@pytest.mark.timeout(600)
def test_two_replicas_one_killed_midway_take_every_backup_exactly_once_with_equal_data(
    settings: Settings, tmp_path: Path
) -> None:
    with patterned_domains(settings.libvirt_uri, tmp_path / "vms", DOMAINS, disk_mib=16) as vms:
        figures = run_replicas(settings, vms, BACKUPS, logs=tmp_path)
    print(figures.line())
    assert figures.samples > 0
    assert figures.clean, figures.problems

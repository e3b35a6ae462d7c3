"""bench/chaos.py runs, a few trials of each fault, and finds nothing wrong:
so CI exercises the script itself, not only the scenarios it shares with
test_crashes.py and test_libvirtd_restart.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.libvirt
ROOT = Path(__file__).resolve().parents[2]
COUNTS = ("lost", "duplicated jobs", "wrong statuses", "data mismatches", "orphaned")


@pytest.mark.timeout(150)
def test_the_chaos_bench_counts_no_lost_duplicated_wrong_or_mismatched_backup() -> None:
    result = subprocess.run(
        [sys.executable, "bench/chaos.py", "--trials", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    output = result.stdout + result.stderr
    figures = dict(
        line.rsplit(maxsplit=1) for line in result.stdout.splitlines() if line[:1].isalpha()
    )
    assert result.returncode == 0, output
    assert figures["trials"] == "4", output
    zero = dict.fromkeys((*COUNTS, "trial errors"), "0")
    assert {name: figures.get(name) for name in zero} == zero, output

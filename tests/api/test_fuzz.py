"""Schemathesis against the served OpenAPI, at a bounded count (a few hundred
cases); `bench/fuzz_api.py` runs the same at thousands. What is checked and what
is left out (and why) is in tests/support/fuzz.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fuzz import fuzz, served_app
from tests.support.vms import TestVM

pytestmark = pytest.mark.libvirt


def test_generated_requests_get_documented_answers_and_no_5xx(tmp_path: Path, vm: TestVM) -> None:
    with served_app(tmp_path) as base_url:
        figures = fuzz(base_url, cases_per_mode=8, seed=8, own=(vm.name, vm.uuid))
    report = figures.report()
    assert figures.cases >= 300, report
    assert figures.server_errors == 0, report
    assert figures.failures == {}, report
    # The run reached past validation: lookups answered, input refused, pages served.
    assert {200, 404, 422} <= set(figures.statuses), report

"""Schemathesis against the served OpenAPI, at a bounded count (a few hundred
cases, and a few scenarios along the OpenAPI links); `bench/fuzz_api.py` runs the
same at thousands. What is checked and what is left out (and why) is in
tests/support/fuzz.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fuzz import Figures, fuzz, fuzz_stateful, own_domain, served_app

pytestmark = pytest.mark.libvirt


def test_generated_requests_get_documented_answers_and_no_5xx(tmp_path: Path) -> None:
    with own_domain(tmp_path) as vm, served_app(tmp_path) as base_url:
        figures = fuzz(base_url, cases_per_mode=8, seed=8, own=(vm.name, vm.uuid))
    report = figures.report()
    assert figures.cases >= 300, report
    assert figures.server_errors == 0, report
    assert figures.failures == {}, report
    # The run reached past validation: lookups answered, input refused, pages served.
    assert {200, 404, 422} <= set(figures.statuses), report


MAX_ROUNDS = 4


def test_scenarios_along_the_links_get_documented_answers(tmp_path: Path) -> None:
    figures = Figures()
    with own_domain(tmp_path) as vm, served_app(tmp_path) as base_url:
        # Scenarios are not seeded (later steps follow the server's answers; under
        # CI=true hypothesis's own "ci" profile derandomizes them): a round may make
        # nothing, so a few rounds at most, until one does.
        for _ in range(MAX_ROUNDS):
            fuzz_stateful(base_url, scenarios=15, own=(vm.name, vm.uuid), figures=figures)
            if {201, 202} & set(figures.statuses):
                break
    report = figures.report()
    assert figures.server_errors == 0, report
    assert figures.failures == {}, report
    # Something was made and then followed: a backup or a checkpoint, then its links.
    assert {201, 202} & set(figures.statuses), report

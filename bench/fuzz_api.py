"""Fuzz the served OpenAPI with schemathesis and print the figures.

    .venv/bin/python bench/fuzz_api.py [--cases-per-mode 130] [--scenarios 60] [--seed 8]

Serves the app (`vmbackup serve` on a loopback port, SQLite, the real libvirtd,
a throw-away domain of its own), sends `--cases-per-mode` positive and as many
negative generated cases to every operation but host registration, the domain list
and the never-ending event feed (see tests/support/fuzz.py), and checks each answer:
no 5xx, status, content type, headers and body as documented, negative input
refused, auth not ignored, every error `application/problem+json`. Then
`--scenarios` stateful scenarios along the OpenAPI links (backups and checkpoints
made on that domain, then read, cancelled, finished, restored, deleted), checked
the same way. Exits non-zero on any failure."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fuzz import Figures, fuzz, fuzz_stateful, own_domain, served_app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases-per-mode", type=int, default=130)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--scenarios", type=int, default=60)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmbackup-fuzz-") as workdir:
        with own_domain(Path(workdir)) as vm, served_app(Path(workdir)) as base_url:
            own = (vm.name, vm.uuid)
            figures = fuzz(base_url, cases_per_mode=args.cases_per_mode, seed=args.seed, own=own)
            print("stateless:", figures.report(), sep="\n", flush=True)
            stateful = Figures()
            scenarios = args.scenarios
            fuzz_stateful(base_url, scenarios=scenarios, own=own, figures=stateful)
            print("stateful (along the OpenAPI links):", stateful.report(), sep="\n")
        print(f"wall time: {time.monotonic() - started:.0f} s")
        failed = any(f.server_errors or f.failure_count for f in (figures, stateful))
        if failed:
            print("server log:", (Path(workdir) / "server.log").read_text()[-4000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

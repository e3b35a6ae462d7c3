"""Fuzz the served OpenAPI with schemathesis and print the figures.

    .venv/bin/python bench/fuzz_api.py [--cases-per-mode 130] [--seed 8]

Serves the app (`vmbackup serve` on a loopback port, SQLite, the real libvirtd,
a throw-away domain of its own), sends `--cases-per-mode` positive and as many
negative generated cases to every operation but host registration, the domain list
and the never-ending event feed (see tests/support/fuzz.py), and checks each answer:
no 5xx, status, content type, headers and body as documented, negative input
refused, auth not ignored, every error `application/problem+json`. Exits non-zero on any failure."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libvirt

from tests.support.fuzz import fuzz, served_app
from tests.support.vms import throwaway_vm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases-per-mode", type=int, default=130)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    started = time.monotonic()
    conn = libvirt.open("qemu:///system")
    with (
        tempfile.TemporaryDirectory(prefix="vmbackup-fuzz-") as workdir,
        throwaway_vm(conn, workdir=Path(workdir) / "vms") as vm,
    ):
        with served_app(Path(workdir)) as base_url:
            figures = fuzz(
                base_url,
                cases_per_mode=args.cases_per_mode,
                seed=args.seed,
                own=(vm.name, vm.uuid),
            )
        print(figures.report())
        print(f"wall time: {time.monotonic() - started:.0f} s")
        if figures.server_errors or figures.failure_count:
            print("server log:", (Path(workdir) / "server.log").read_text()[-4000:])
    return 1 if figures.server_errors or figures.failure_count else 0


if __name__ == "__main__":
    sys.exit(main())

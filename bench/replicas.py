"""Two replicas on one PostgreSQL, many backups, one replica `kill -9`ed midway
and started again (issue 7): prints backups, lost, duplicated, overlapping,
mismatched and the time taken. All but backups and time must be 0.

Each domain is paused with a pattern of its own; backups are push, every third
`full`, the rest `auto`, POSTed through either replica. A fresh database is made
on the PostgreSQL of VMBACKUP_TEST_PG (default: postgres@127.0.0.1:5432) and
dropped after. Not a test: tests/integration/test_replica_run.py runs the same
at 100 over 10 and asserts; this prints the figures, at any count.

    cd /work/main && .venv/bin/python bench/replicas.py [--backups 100] [--domains 10]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from app.settings import Settings  # noqa: E402
from tests.support.replica_run import Figures, patterned_domains, run_replicas  # noqa: E402

PG_ADMIN_DSN = os.environ.get("VMBACKUP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _url(name: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def _run(args: argparse.Namespace, workdir: Path, database_url: str) -> Figures:
    settings = Settings(
        data_dir=workdir / "data",
        database_url=database_url,
        socket_root=workdir / "run",
        tokens=[],
        lease_seconds=args.lease_seconds,
        poll_seconds=0.2,
    )
    domains = patterned_domains(settings.libvirt_uri, workdir / "vms", args.domains, args.disk_mib)
    with domains as vms:
        return run_replicas(settings, vms, args.backups, logs=workdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backups", type=int, default=100)
    parser.add_argument("--domains", type=int, default=10)
    parser.add_argument("--disk-mib", type=int, default=16)
    parser.add_argument("--lease-seconds", type=float, default=6.0)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    args = parser.parse_args()

    database = f"vmbench_{secrets.token_hex(4)}"
    _admin(f"CREATE DATABASE {database}")
    try:
        with tempfile.TemporaryDirectory(prefix="vmbench-") as tmp:
            workdir = args.workdir or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            figures = _run(args, workdir, _url(database))
    finally:
        _admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    setup = f"domains {args.domains}, disks {args.disk_mib} MiB, lease {args.lease_seconds:g} s"
    print(f"replicas 2, {setup}")
    print(figures.line())
    for problem in figures.problems[:20]:
        print(f"  {problem}")
    return 0 if figures.clean else 1


if __name__ == "__main__":
    sys.exit(main())

"""Chaos: repeat the faults the service must survive, and count what went wrong.

Two kinds of trials, `--trials` of each (default 20):

  kill      `kill -9` of `vmbackup serve`, then a restart: at a crash point
            picked at random (one of the scenarios of tests/support/faults.py:
            queued, claimed, before/after backupBegin, running, ready,
            finishing, completing, rebasing, restore converting), or at a random
            instant up to 1.5 s after a push or a pull is posted;
  libvirtd  libvirtd stopped and started under a `ready` pull, or under a push
            held running by a QMP speed limit (through the outage, or ending
            during it with the service frozen, so its JOB_COMPLETED is lost).

Every trial uses a fresh throw-away domain and its own backup, scratch,
restore and socket roots, with one database for the run (SQLite by default,
`--database-url` for PostgreSQL). After each trial the sweep checks that every
backup succeeded once (one `starting`, no `failed`), pull exports and push files
read as the disk, and no libvirt job, checkpoint or file is left behind.

Prints trials, lost, duplicated jobs, wrong statuses, data mismatches, orphans
and trial errors (all must be 0), and the time it took; exits 1 otherwise.
libvirtd trials disturb every other user of this libvirtd.

    cd /work/main && .venv/bin/python bench/chaos.py [--trials 20] [--seed N]
        [--database-url postgresql+psycopg://...] [--kinds kill,libvirtd]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import libvirt  # noqa: E402

from app.settings import Settings  # noqa: E402
from tests.support.faults import (  # noqa: E402
    CRASH_STEPS,
    LEASE_SECONDS,
    Broken,
    FaultRun,
    Tally,
    create_held_push_vm,
    kill_at_random,
    restart_during_pull,
    restart_during_push,
)
from tests.support.libvirtd import LiveConnection  # noqa: E402
from tests.support.service import ServiceProcess, service_env  # noqa: E402
from tests.support.vms import TestVM, create_vm, destroy_vm  # noqa: E402

Scenario = Callable[[FaultRun], object]
KINDS = ("kill", "libvirtd")


def pick_kill(rng: random.Random) -> tuple[str, Scenario]:
    if rng.random() < 0.5:
        step = rng.choice(sorted(CRASH_STEPS))
        return f"crash at {step}", CRASH_STEPS[step]
    return "kill at a random instant", kill_at_random(rng)


def pick_libvirtd(rng: random.Random) -> tuple[str, Scenario]:
    case = rng.choice(["pull", "push runs through", "push ends during"])
    if case == "pull":
        return "libvirtd restart under a ready pull", restart_during_pull
    ends = case == "push ends during"

    def scenario(run: FaultRun) -> object:
        return restart_during_push(run, ends_during_outage=ends)

    return f"libvirtd restart, {case}", scenario


def trial_settings(base: Path, number: int, database_url: str) -> Settings:
    data = base / f"trial-{number:03d}"
    return Settings(
        data_dir=data,
        database_url=database_url,
        socket_root=data / "run",
        tokens=[],
        lease_seconds=LEASE_SECONDS,
        poll_seconds=0.2,
    )


def run_trial(
    scenario: Scenario, settings: Settings, live: LiveConnection, tally: Tally, held: bool
) -> None:
    workdir = settings.data_dir / "vms"
    vm: TestVM = (
        create_held_push_vm(live.conn, workdir) if held else create_vm(live.conn, workdir=workdir)
    )
    service = ServiceProcess(service_env(settings), log=settings.data_dir / "service.log")
    run = FaultRun(settings, live, vm, service, tally)
    try:
        scenario(run)
        run.sweep()
    except Broken as broken:
        getattr(tally, broken.kind).append(broken.message)
    except Exception as error:  # the trial itself failed: say so, go on with the next
        tally.errors.append(f"{type(error).__name__}: {error}")
    finally:
        service.kill()
        destroy_vm(live.conn, vm)
    tally.trials += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials of each kind")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--kinds", default=",".join(KINDS), help="kill, libvirtd or both")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    kinds = [kind for kind in args.kinds.split(",") if kind]
    assert set(kinds) <= set(KINDS), f"--kinds: {kinds}"

    # A connection found dead after a libvirtd restart is opened again: not news.
    libvirt.registerErrorHandler(lambda _ctx, _error: None, None)
    tally = Tally()
    live = LiveConnection()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmbackup-chaos-") as tmp:
        base = Path(tmp)
        database_url = args.database_url or f"sqlite+aiosqlite:///{base / 'vmbackup.db'}"
        print(f"chaos: {args.trials} trials of {', '.join(kinds)}; seed {seed}; {database_url}")
        plan = [kind for kind in kinds for _ in range(args.trials)]
        rng.shuffle(plan)
        for number, kind in enumerate(plan, 1):
            label, scenario = pick_kill(rng) if kind == "kill" else pick_libvirtd(rng)
            before = sum(len(items) for items in tally.problems().values())
            trial_started = time.monotonic()
            held = label.startswith("libvirtd restart, push")
            run_trial(scenario, trial_settings(base, number, database_url), live, tally, held)
            found = sum(len(items) for items in tally.problems().values()) - before
            verdict = "ok" if found == 0 else f"{found} problem(s)"
            print(f"  {number:3d} {label:<40} {time.monotonic() - trial_started:6.1f} s  {verdict}")
    live.close()
    print_figures(tally, time.monotonic() - started)
    return 1 if tally.problems() else 0


def print_figures(tally: Tally, seconds: float) -> None:
    figures = [
        ("trials", tally.trials),
        ("lost", len(tally.lost)),
        ("duplicated jobs", len(tally.duplicated)),
        ("wrong statuses", len(tally.wrong_status)),
        ("data mismatches", len(tally.mismatched)),
        ("orphaned", len(tally.orphaned)),
        ("trial errors", len(tally.errors)),
    ]
    for name, count in figures:
        print(f"{name:<16} {count}")
    print(f"{'time':<16} {seconds:.1f} s")
    for kind, items in tally.problems().items():
        for item in items:
            print(f"{kind}: {item}")


if __name__ == "__main__":
    sys.exit(main())

"""Named steps where a test can make the process die, as `kill -9` would.

`VMBACKUP_CRASH_AT=<step>` (tests only) makes the process exit at once, with
nothing flushed or cleaned up, the first time it reaches that step. Unset, as
in production, `crash_point` is one dictionary lookup and does nothing.

Steps: claimed, before-begin, after-begin, running, ready, finishing,
completing, rebasing, merging (retention), restore-converting.
"""

from __future__ import annotations

import os
import sys

CRASH_ENV = "VMBACKUP_CRASH_AT"
CRASH_EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL
STEPS = frozenset(
    {
        "claimed",
        "before-begin",
        "after-begin",
        "running",
        "ready",
        "finishing",
        "completing",
        "rebasing",
        "merging",
        "restore-converting",
    }
)


def crash_point(step: str) -> None:
    assert step in STEPS, step
    if os.environ.get(CRASH_ENV) == step:
        sys.stderr.write(f"vmbackup: crashing at {step} ({CRASH_ENV})\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)

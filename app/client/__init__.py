"""`vmbackup hosts | domains | backup | restore | checkpoints | policies | events`: a
client of the HTTP API (the contract it speaks is served at `/openapi.json`).

It talks to the service only over HTTP, so it imports nothing of the server. This module
stays light (no click, httpx or rich) because `app.cli` asks it, for every command line,
whether the command is the client's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

COMMANDS = frozenset({"hosts", "domains", "backup", "restore", "checkpoints", "policies", "events"})
# The group's own options that take a value, to be skipped when looking for the command.
_VALUE_OPTIONS = frozenset({"--url", "--token"})
HELP = (
    "client commands, over the HTTP API of a running service: "
    + ", ".join(sorted(COMMANDS))
    + " (vmbackup COMMAND --help)"
)


def owns(argv: Sequence[str] | None = None) -> bool:
    """Whether `argv` (default: this process's, without the program name) is a client
    command line."""
    args = iter(sys.argv[1:] if argv is None else argv)
    for arg in args:
        if arg in _VALUE_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return arg in COMMANDS
    return False


def main(argv: Sequence[str] | None = None) -> None:
    from app.client.commands import run

    run(sys.argv[1:] if argv is None else argv)

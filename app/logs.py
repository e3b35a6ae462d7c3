"""Logging, configured once: JSON lines for machines, text for a terminal.

The code logs through the standard library (`logging.getLogger(__name__)`); the
one root handler renders every record, uvicorn's and alembic's too, with
structlog. What a line concerns comes from context variables: the request
middleware binds the request id and the path's host, domain, backup and
restore; the worker binds the backup or restore it runs. So a line names its
backup without each call passing it, and a grep for one id finds every line.

    {"timestamp": "2026-…Z", "level": "info", "logger": "app.transitions",
     "event": "backup 3f2c…: running -> succeeded", "backup_id": "3f2c…",
     "host": "local", "domain": "web1", "domain_uuid": "0aa7…", "status": "succeeded"}
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog
from structlog.contextvars import bound_contextvars
from structlog.typing import EventDict, Processor

# The context keys a line can carry, in the order people read them.
CONTEXT_KEYS = (
    "request_id",
    "backup_id",
    "restore_id",
    "policy",
    "host",
    "domain",
    "domain_uuid",
    "checkpoint",
)
QUIET_LOGGERS = {"alembic": logging.WARNING}


def configure(level: str, stream: TextIO | None = None) -> None:
    """Route every standard-library record through structlog into `stream`
    (stderr): JSON lines, or readable text when it is a terminal."""
    stream = stream or sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.ExtraAdder(),  # `extra={"backup_id": ...}` where no context is bound
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if stream.isatty():
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(default=str)
    shared.append(_in_reading_order)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, quiet_level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet_level, root.level))


def _in_reading_order(_logger: object, _method: str, event: EventDict) -> EventDict:
    """When, how bad, who, what, then what it concerns; uvicorn's copy of its
    message with terminal colours is dropped."""
    event.pop("color_message", None)
    first = ("timestamp", "level", "logger", "event", *CONTEXT_KEYS)
    return {key: event[key] for key in first if key in event} | {
        key: value for key, value in event.items() if key not in first
    }


@contextmanager
def concerning(**ids: Any) -> Iterator[None]:
    """Every line logged inside names these (None values are left out)."""
    with bound_contextvars(**{key: str(value) for key, value in ids.items() if value is not None}):
        yield

"""app.logs: JSON lines that carry the ids bound around them; text on a terminal."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from app import logs


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_names_what_it_concerns_as_json() -> None:
    stream = io.StringIO()
    logs.configure("info", stream)
    with logs.concerning(backup_id="b-1", host="local", domain="web1", restore_id=None):
        logging.getLogger("app.worker.runner").info("job found in %s", "libvirt")
    logging.getLogger("app.worker.runner").info("after")
    inside, after = _lines(stream)
    assert inside["event"] == "job found in libvirt"
    assert inside["level"] == "info"
    assert inside["logger"] == "app.worker.runner"
    assert (inside["backup_id"], inside["host"], inside["domain"]) == ("b-1", "local", "web1")
    assert "restore_id" not in inside  # None is left out, not logged as null
    assert str(inside["timestamp"]).endswith("Z")
    assert "backup_id" not in after  # the binding ended with its block


def test_extra_fields_and_exceptions_are_kept() -> None:
    stream = io.StringIO()
    logs.configure("info", stream)
    try:
        raise ValueError("bad disk")
    except ValueError:
        logging.getLogger("app.worker.pool").exception("runner failed", extra={"backup_id": "b-2"})
    (line,) = _lines(stream)
    assert line["backup_id"] == "b-2"
    assert line["level"] == "error"
    assert "ValueError: bad disk" in str(line["exception"])


def test_the_level_filters_and_alembic_stays_quiet() -> None:
    stream = io.StringIO()
    logs.configure("warning", stream)
    logging.getLogger("app.x").info("not shown")
    logging.getLogger("app.x").warning("shown")
    logging.getLogger("alembic.runtime").info("Running upgrade")
    assert [line["event"] for line in _lines(stream)] == ["shown"]


def test_a_terminal_gets_readable_text() -> None:
    stream = Terminal()
    logs.configure("debug", stream)
    with logs.concerning(backup_id="b-3"):
        logging.getLogger("app.x").debug("hello")
    text = stream.getvalue()
    assert "hello" in text
    assert "backup_id=b-3" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])

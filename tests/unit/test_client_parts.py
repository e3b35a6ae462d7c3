"""The client's pure parts: which command lines are the client's, and the SSE parser."""

from __future__ import annotations

import pytest

from app.client import owns
from app.client.sse import Event, parse_events


@pytest.mark.parametrize(
    ("argv", "client"),
    [
        (["hosts"], True),
        (["--json", "backup", "list"], True),
        (["--url", "http://h:1", "--token", "t", "domains", "kvm2"], True),
        (["--url=http://h:1", "events"], True),
        (["serve", "--port", "9"], False),
        (["migrate"], False),
        (["--help"], False),
        ([], False),
        (["--url", "hosts"], False),  # `hosts` is the URL here, and no command follows
    ],
)
def test_the_client_owns_its_commands_and_leaves_the_servers(argv: list[str], client: bool) -> None:
    assert owns(argv) is client


def test_sse_events_are_parsed_as_the_service_writes_them() -> None:
    lines = [
        ": keepalive",
        "",
        "id: 7",
        "event: status",
        'data: {"status": "running"}',
        "",
        "id: 8",
        "event: progress",
        "data: {",
        "data: }",
        "",
        "data: no id",  # an unterminated event at the end is not delivered
    ]
    assert list(parse_events(lines)) == [
        Event("7", "status", '{"status": "running"}'),
        Event("8", "progress", "{\n}"),
    ]
    assert next(parse_events(lines[2:6])).json() == {"status": "running"}

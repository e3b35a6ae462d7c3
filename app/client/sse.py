"""Server-sent events (the WHATWG text/event-stream format), as far as the service uses it:
`id`, `event` and `data` fields, comment lines for keep-alive, a blank line ends an event."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    id: str | None
    name: str
    data: str

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.data)
        return body


@dataclass
class _Pending:
    id: str | None = None
    name: str = "message"
    data: list[str] = field(default_factory=list)


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    pending = _Pending()
    for line in lines:
        if not line:
            if pending.data:
                yield Event(pending.id, pending.name, "\n".join(pending.data))
            pending = _Pending()
            continue
        if line.startswith(":"):  # a comment: the service's keep-alive
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "data":
            pending.data.append(value)
        elif key == "event":
            pending.name = value
        elif key == "id":
            pending.id = value

"""The HTTP API as the client sees it: JSON in and out, problems as one line."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from app.client.sse import Event, parse_events

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_SECONDS = 30.0
# A stream that drops (a proxy, a restarting service) is resumed with Last-Event-ID, for
# as long as a restart of the service may take; a service gone for longer is an error.
STREAM_OUTAGE_SECONDS = 120.0
STREAM_RETRY_FIRST_SECONDS = 0.5
STREAM_RETRY_MAX_SECONDS = 5.0

JSON = dict[str, Any]


def _query(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Query parameters without the options left unset."""
    return {k: v for k, v in (params or {}).items() if v is not None}


class ClientError(Exception):
    """What the command line prints as its one line on stderr."""


class ApiProblem(ClientError):
    """An RFC 9457 problem (or any error status) answered by the service."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code} ({status}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class ServiceUnreachable(ClientError):
    pass


def _problem(response: httpx.Response) -> ApiProblem:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        detail = str(body.get("detail") or body.get("title") or "")
        return ApiProblem(response.status_code, str(body["code"]), " ".join(detail.split()))
    text = " ".join(response.text.split())[:200] or response.reason_phrase
    return ApiProblem(response.status_code, "http-error", text)


@dataclass
class Api:
    """One service, one token. Every call returns the decoded JSON or raises ClientError."""

    url: str
    token: str | None = None

    def __post_init__(self) -> None:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT_SECONDS)

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            reason = str(error) or type(error).__name__
            raise ServiceUnreachable(f"cannot reach {self.url}: {reason}") from None
        if response.is_error:
            raise _problem(response)
        return response

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> JSON:
        body: JSON = self._send("GET", path, params=_query(params)).json()
        return body

    def post(
        self, path: str, body: JSON | None = None, params: Mapping[str, Any] | None = None
    ) -> JSON:
        # A fresh Idempotency-Key per call: should the request reach the service twice
        # (a retrying proxy), the second gets the first's response, not a second backup.
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        response = self._send("POST", path, json=body, params=_query(params), headers=headers)
        return response.json() if response.content else {}

    def patch(self, path: str, body: JSON) -> JSON:
        response: JSON = self._send("PATCH", path, json=body).json()
        return response

    def delete(self, path: str, params: Mapping[str, Any] | None = None) -> None:
        self._send("DELETE", path, params=_query(params))

    def events(
        self, path: str, params: Mapping[str, Any] | None = None, after: str | None = None
    ) -> Iterator[Event]:
        """Server-sent events from `path` (after event id `after`), resumed after a dropped
        connection; ends when the service ends the stream."""
        query = _query(params)
        last_id = after
        lost_at: float | None = None
        delay = STREAM_RETRY_FIRST_SECONDS
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                with self._http.stream(
                    "GET",
                    path,
                    params=query,
                    headers=headers,
                    timeout=httpx.Timeout(TIMEOUT_SECONDS, read=None),
                ) as response:
                    if response.is_error:
                        response.read()
                        raise _problem(response)
                    lost_at, delay = None, STREAM_RETRY_FIRST_SECONDS
                    for event in parse_events(response.iter_lines()):
                        last_id = event.id or last_id
                        yield event
                    return
            except httpx.TransportError as error:
                lost_at = lost_at or time.monotonic()
                if time.monotonic() - lost_at > STREAM_OUTAGE_SECONDS:
                    raise ServiceUnreachable(
                        f"event stream from {self.url} lost: {error}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, STREAM_RETRY_MAX_SECONDS)


def dumps(body: object) -> str:
    return json.dumps(body, indent=2)

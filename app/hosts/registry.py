"""The hosts the service talks to: `local` from settings, the rest from the
database. Each is a `Hypervisor`; a factory makes them so tests can fake it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Protocol

from app.errors import HostNotFound
from app.hypervisor import EventListener, Hypervisor

LOCAL_HOST = "local"


class ManagedHypervisor(Hypervisor, Protocol):
    async def start(self) -> None: ...


HypervisorFactory = Callable[[str, str], ManagedHypervisor]


class HostRegistry:
    def __init__(self, factory: HypervisorFactory) -> None:
        self._factory = factory
        self._hosts: dict[str, ManagedHypervisor] = {}
        self._listeners: list[EventListener] = []

    def __iter__(self) -> Iterator[Hypervisor]:
        return iter(list(self._hosts.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._hosts

    def get(self, name: str) -> Hypervisor:
        try:
            return self._hosts[name]
        except KeyError:
            raise HostNotFound(f"host {name} is not registered") from None

    def subscribe_all(self, listener: EventListener) -> None:
        """Deliver every host's events, including hosts added later."""
        self._listeners.append(listener)
        for host in self._hosts.values():
            host.subscribe(listener)

    async def add(self, name: str, uri: str) -> Hypervisor:
        host = self._factory(name, uri)
        for listener in self._listeners:
            host.subscribe(listener)
        self._hosts[name] = host
        await host.start()
        return host

    async def remove(self, name: str) -> None:
        host = self._hosts.pop(name, None)
        if host is not None:
            await host.close()

    async def close(self) -> None:
        hosts, self._hosts = list(self._hosts.values()), {}
        await asyncio.gather(*(host.close() for host in hosts), return_exceptions=True)

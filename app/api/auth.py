"""Bearer tokens with scopes. Tokens are configured as SHA-256 digests only.

Scopes are ordered: `admin` includes `operate`, which includes `read`."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from fastapi import Request

from app.errors import Forbidden, Unauthorized
from app.settings import Scope, Settings

_RANK: dict[Scope, int] = {"read": 0, "operate": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[Scope]
    digest: str | None = None  # the token's SHA-256; None when no tokens are configured

    @property
    def key(self) -> str:
        """What is counted and namespaced per token (idempotency keys, open streams):
        the digest, since names need not be unique."""
        return self.digest or self.name

    def allows(self, scope: Scope) -> bool:
        return any(_RANK[held] >= _RANK[scope] for held in self.scopes)


ANONYMOUS = Principal("anonymous", frozenset(_RANK))


def is_loopback_client(client: tuple[str, int] | None) -> bool:
    """Whether the socket peer is this machine. No peer address is a unix socket,
    which only this machine can reach (its file mode says who)."""
    if client is None:
        return True
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def authenticate(request: Request, settings: Settings) -> Principal:
    if not settings.tokens:
        # Everyone is admin, so only this machine may ask: `LoopbackOnly` refuses
        # the rest before routing; checked again here in case a route is reached
        # some other way.
        client = request.client
        if not is_loopback_client(None if client is None else (client.host, client.port)):
            raise Forbidden("no tokens are configured: only loopback clients are served")
        return ANONYMOUS
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a bearer token is required")
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    for configured in settings.tokens:
        if hmac.compare_digest(digest, configured.sha256):
            return Principal(configured.name, frozenset(configured.scopes), configured.sha256)
    raise Unauthorized("the bearer token is not valid")


def authorize(principal: Principal, scope: Scope) -> None:
    if not principal.allows(scope):
        raise Forbidden(f"this token lacks the '{scope}' scope")

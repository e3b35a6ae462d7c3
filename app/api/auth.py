"""Bearer tokens with scopes. Tokens are configured as SHA-256 digests only.

Scopes are ordered: `admin` includes `operate`, which includes `read`."""

from __future__ import annotations

import hashlib
import hmac
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


def authenticate(request: Request, settings: Settings) -> Principal:
    if not settings.tokens:
        return ANONYMOUS  # loopback only: Settings refuses any other address
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

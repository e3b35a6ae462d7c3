"""Dependencies: each route lists what it needs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal, authenticate, authorize
from app.api.state import AppState
from app.hosts.registry import HostRegistry
from app.settings import Scope, Settings


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.vmbackup
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_hosts(state: StateDep) -> HostRegistry:
    return state.hosts


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """The request owns the transaction: committed before the response is
    sent, rolled back on any error."""
    async with state.database.session_scope() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
HostsDep = Annotated[HostRegistry, Depends(get_hosts)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def get_principal(request: Request, settings: SettingsDep) -> Principal:
    return authenticate(request, settings)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(scope: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: PrincipalDep) -> Principal:
        authorize(principal, scope)
        return principal

    # Read by `app.api.routing` (auth before the body) and the OpenAPI (security).
    check.required_scope = scope  # type: ignore[attr-defined]
    return check


def required_scope(dependant: Dependant) -> Scope | None:
    """The scope a route's dependencies require, if any."""
    for dependency in dependant.dependencies:
        scope: Scope | None = getattr(dependency.call, "required_scope", None)
        if scope is None:
            scope = required_scope(dependency)
        if scope is not None:
            return scope
    return None


def uses_database(dependant: Dependant) -> bool:
    return any(
        dependency.call is get_session or uses_database(dependency)
        for dependency in dependant.dependencies
    )


ReadDep = Annotated[Principal, Depends(require("read"))]
OperateDep = Annotated[Principal, Depends(require("operate"))]
AdminDep = Annotated[Principal, Depends(require("admin"))]

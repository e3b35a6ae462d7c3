from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import HostsDep, ReadDep, SessionDep
from app.api.params import DomainPath, HostPath
from app.api.problems import problem_responses
from app.api.routing import AuthFirstRoute
from app.domains import service
from app.domains.schemas import DomainList, DomainOut
from app.errors import (
    DomainNotFound,
    HostNotFound,
    HostUnreachable,
    HypervisorError,
    HypervisorInvalidState,
    HypervisorUnsupported,
)

# Every route here asks libvirt.
_LIBVIRT = (
    HostNotFound,
    HostUnreachable,
    HypervisorError,
    HypervisorUnsupported,
    HypervisorInvalidState,
)

router = APIRouter(prefix="/v1/hosts/{host}/domains", tags=["domains"], route_class=AuthFirstRoute)


@router.get(
    "",
    responses=problem_responses(*_LIBVIRT),
    description="Read live from libvirt. 503 `host-unreachable` while the host is disconnected.",
    summary="List a host's domains",
)
async def list_domains(
    host: HostPath, _: ReadDep, hosts: HostsDep, session: SessionDep
) -> DomainList:
    return DomainList(items=await service.list_domains(session, hosts.get(host)))


@router.get(
    "/{domain}",
    responses=problem_responses(*_LIBVIRT, DomainNotFound),
    description="`{domain}` is a name or a UUID.",
    summary="Get a domain",
)
async def get_domain(
    host: HostPath, domain: DomainPath, _: ReadDep, hosts: HostsDep, session: SessionDep
) -> DomainOut:
    return await service.get_domain(session, hosts.get(host), domain)

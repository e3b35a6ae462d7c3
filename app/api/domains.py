from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import HostsDep, ReadDep, SessionDep
from app.api.problems import problem_responses
from app.domains import service
from app.domains.schemas import DomainList, DomainOut

router = APIRouter(prefix="/v1/hosts/{host}/domains", tags=["domains"])


@router.get(
    "",
    responses=problem_responses(401, 403, 404, 503),
    description="Read live from libvirt. 503 `host-unreachable` while the host is disconnected.",
)
async def list_domains(host: str, _: ReadDep, hosts: HostsDep, session: SessionDep) -> DomainList:
    return DomainList(items=await service.list_domains(session, hosts.get(host)))


@router.get(
    "/{domain}",
    responses=problem_responses(401, 403, 404, 503),
    description="`{domain}` is a name or a UUID.",
)
async def get_domain(
    host: str, domain: str, _: ReadDep, hosts: HostsDep, session: SessionDep
) -> DomainOut:
    return await service.get_domain(session, hosts.get(host), domain)

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response, status

from app.api import examples
from app.api.deps import AdminDep, HostsDep, ReadDep, SessionDep, SettingsDep
from app.api.params import HostPath
from app.api.problems import problem_responses
from app.api.routing import AuthFirstRoute
from app.errors import HostNotFound, InvalidState, UriNotAllowed
from app.hosts.schemas import HostCreate, HostList, HostOut
from app.hosts.service import add_host, host_out, remove_host

router = APIRouter(prefix="/v1/hosts", tags=["hosts"], route_class=AuthFirstRoute)


@router.get("", summary="List hosts")
async def list_hosts(_: ReadDep, hosts: HostsDep) -> HostList:
    return HostList(items=sorted((host_out(h) for h in hosts), key=lambda h: h.name))


@router.get("/{host}", responses=problem_responses(HostNotFound), summary="Get a host")
async def get_host(host: HostPath, _: ReadDep, hosts: HostsDep) -> HostOut:
    return host_out(hosts.get(host))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(InvalidState, UriNotAllowed)
    | examples.answer(201, examples.HOST_OUT),
    description="Registers a libvirt connection. A host that cannot connect yet is still "
    "recorded and shown `disconnected` with libvirt's reason; it is retried with backoff. "
    "409 `invalid-state` when the name is taken; 422 `uri-not-allowed` for a URI outside the "
    "allow-list, before libvirt is called.",
    summary="Register a host",
)
async def create_host(
    body: Annotated[HostCreate, Body(openapi_examples=examples.HOST_CREATE)],
    _: AdminDep,
    hosts: HostsDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
) -> HostOut:
    host = await add_host(session, hosts, body, allow_tcp=settings.allow_tcp_hosts)
    response.headers["Location"] = f"/v1/hosts/{host.name}"
    return host_out(host)


@router.delete(
    "/{host}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(HostNotFound, InvalidState),
    description="409 `invalid-state` for `local` (it comes from settings) and while the "
    "host has queued or active backups.",
    summary="Remove a host",
)
async def delete_host(host: HostPath, _: AdminDep, hosts: HostsDep, session: SessionDep) -> None:
    await remove_host(session, hosts, host)

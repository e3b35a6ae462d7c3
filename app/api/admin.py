"""Operator routes (admin scope): what the service holds on disk."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from app import orphans
from app.api.deps import AdminDep, SessionDep, SettingsDep
from app.api.problems import problem_responses
from app.api.routing import AuthFirstRoute

router = APIRouter(tags=["admin"], route_class=AuthFirstRoute)


class OrphanOut(BaseModel):
    root: Literal["backup", "scratch", "restore"]
    path: str
    type: Literal["file", "symlink", "directory", "other"]
    bytes: int
    modified_at: datetime


class OrphanList(BaseModel):
    items: list[OrphanOut]
    bytes: int


@router.get(
    "/v1/admin/orphans",
    responses=problem_responses(),
    description="Entries under the backup, scratch and restore roots that no backup or "
    "restore names (files, links, empty directories), for an operator to remove; "
    "`vmbackup orphans --delete` removes them. Links are listed, never followed.",
    summary="List files no backup or restore owns",
)
async def list_orphans(_: AdminDep, settings: SettingsDep, session: SessionDep) -> OrphanList:
    owned = await orphans.owned(session, settings)
    found = await asyncio.to_thread(lambda: list(orphans.find(settings, owned)))
    items = [OrphanOut.model_validate(o, from_attributes=True) for o in found]
    return OrphanList(items=items, bytes=sum(o.bytes for o in found))

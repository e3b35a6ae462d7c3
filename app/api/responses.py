"""Answers shared by the routes that start work."""

from __future__ import annotations

from fastapi import status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.state import AppState


def accepted(
    state: AppState, session: AsyncSession, body: BaseModel, location: str
) -> JSONResponse:
    """202 with `Location`; the worker pool looks as soon as the work is committed."""
    if state.pool is not None:
        state.pool.wake_after_commit(session)
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED,
        headers={"Location": location},
    )

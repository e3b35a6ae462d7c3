"""Checkpoints of a domain (API.md, Checkpoints)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/hosts/{host}/domains/{domain}/checkpoints", tags=["checkpoints"])

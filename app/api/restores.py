"""Restores of push backups (API.md, Lineage and restore)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["restores"])

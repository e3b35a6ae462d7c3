from __future__ import annotations

import httpx
from sqlalchemy import text

from app.db.session import Database


async def test_livez_answers_while_the_process_runs(client: httpx.AsyncClient) -> None:
    response = await client.get("/livez")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_with_a_migrated_database_and_a_running_pool(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "worker_pool": "ok"},
    }


async def test_readyz_is_503_when_the_database_is_behind_head(
    client: httpx.AsyncClient, database_url: str
) -> None:
    database = Database(database_url)
    async with database.session_scope() as session:
        await session.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    await database.dispose()
    response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not-ready"
    assert "vmbackup migrate" in body["checks"]["database"]
    assert body["checks"]["worker_pool"] == "ok"


async def test_openapi_describes_the_v1_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/hosts" in spec["paths"]
    assert "/v1/hosts/{host}/domains/{domain}" in spec["paths"]

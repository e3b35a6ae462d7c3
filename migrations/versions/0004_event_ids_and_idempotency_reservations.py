"""event ids never reused on SQLite; idempotency keys reserved before the work

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 00:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _events_autoincrement(enabled: bool) -> None:
    # Without AUTOINCREMENT, SQLite gives a new row max(id) + 1: deleting the newest
    # backups frees their event ids, and a dashboard resuming with Last-Event-ID
    # would skip the events that reuse them. PostgreSQL's sequence never reuses.
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "backup_events", recreate="always", table_kwargs={"sqlite_autoincrement": enabled}
    ):
        pass


def _answer_nullable(nullable: bool) -> None:
    # A key is reserved (its row committed) before the work; the answer comes after.
    with op.batch_alter_table("idempotency_keys") as batch_op:
        batch_op.alter_column("status_code", existing_type=sa.Integer(), nullable=nullable)
        batch_op.alter_column("response_body", existing_type=sa.JSON(), nullable=nullable)


def upgrade() -> None:
    _events_autoincrement(True)
    # Keys were namespaced by token name; now by the token's digest. Old rows
    # would never match again: dropped rather than kept for nothing.
    op.execute("DELETE FROM idempotency_keys")
    _answer_nullable(True)


def downgrade() -> None:
    op.execute("DELETE FROM idempotency_keys WHERE status_code IS NULL")
    _answer_nullable(False)
    _events_autoincrement(False)

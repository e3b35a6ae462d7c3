"""backups remember the kind requested, so `auto` picks its base as it starts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("backups") as batch_op:
        batch_op.add_column(sa.Column("requested_kind", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backups") as batch_op:
        batch_op.drop_column("requested_kind")

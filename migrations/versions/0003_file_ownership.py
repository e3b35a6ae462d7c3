"""backup disks record the files the service made, and their size estimate

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 01:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("backup_disks") as batch_op:
        batch_op.add_column(
            sa.Column("owns_target", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("estimated_bytes", sa.BigInteger(), nullable=True))
    # Before this revision every push target was made by libvirt at the service's
    # request unless the caller made it (reuse_external). Only succeeded backups
    # are sure to have written their own file; a failed one may name another's.
    op.execute(
        sa.text(
            "UPDATE backup_disks SET owns_target = :yes WHERE backup AND target IS NOT NULL "
            "AND backup_id IN (SELECT id FROM backups WHERE mode = 'push' "
            "AND status = 'succeeded' AND NOT reuse_external)"
        ).bindparams(yes=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("backup_disks") as batch_op:
        batch_op.drop_column("estimated_bytes")
        batch_op.drop_column("owns_target")

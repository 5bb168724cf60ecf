"""Re-share policy per subscription, and entries waiting for enough attestations.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sets", sa.Column("reshare_policy", sa.Text, nullable=True))
    op.create_table(
        "reshare_pending",
        sa.Column("set_id", sa.Integer, sa.ForeignKey("sets.id"), nullable=False),
        sa.Column("idx", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("set_id", "idx"),
    )


def downgrade() -> None:
    op.drop_table("reshare_pending")
    op.drop_column("sets", "reshare_policy")

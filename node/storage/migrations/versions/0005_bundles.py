"""Full entry bundles stored as written, so serving one is a single-row read.

Revision ID: 0005
Revises: 0004

Sets written before this revision have no stored bundles; the server builds those from the
records table (slower, same bytes).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bundles",
        sa.Column("set_id", sa.Integer, sa.ForeignKey("sets.id"), nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("set_id", "n"),
    )


def downgrade() -> None:
    op.drop_table("bundles")

"""Evidence rows keep the consistency path that makes a two-size fork provable offline.

Revision ID: 0007
Revises: 0006

``evidence.path``: the larger tree's consistency path (32-byte hashes, concatenated) that
:mod:`protocol.equivocation` needs to prove that two checkpoints of different sizes fork; empty
when the two notes prove it alone (one size, two roots); NULL when the row proves no
equivocation (a rollback) or was kept before this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("evidence", sa.Column("path", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    op.drop_column("evidence", "path")

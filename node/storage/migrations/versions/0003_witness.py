"""Witnesses: witnessed logs and their latest cosigned state, the witnesses a node uses, quorums.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "witness_logs",
        sa.Column("origin", sa.String(200), primary_key=True),
        sa.Column("vkey", sa.Text, nullable=False),
        sa.Column("created", sa.String(20), nullable=False),
    )
    op.create_table(
        "witness_state",
        sa.Column("origin", sa.String(200), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
        sa.Column("note", sa.LargeBinary, nullable=True),
        sa.Column("updated", sa.String(20), nullable=False),
    )
    op.create_table(
        "witness_peers",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("vkey", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("created", sa.String(20), nullable=False),
    )
    op.create_table(
        "witness_quorums",
        sa.Column("set_name", sa.String(200), primary_key=True),
        sa.Column("quorum", sa.Integer, nullable=False),
        sa.Column("vkeys", sa.Text, nullable=False),
        sa.Column("created", sa.String(20), nullable=False),
    )


def downgrade() -> None:
    for table in ("witness_quorums", "witness_peers", "witness_state", "witness_logs"):
        op.drop_table(table)

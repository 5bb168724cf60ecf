"""Initial schema: sets, records (with the current-state view columns), tiles, checkpoints.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("origin", sa.String(200), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("tlp", sa.String(16), nullable=False),
        sa.Column("created", sa.String(20), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
        sa.Column("checkpoint", sa.LargeBinary, nullable=True),
        sa.Column("checkpoint_size", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "records",
        sa.Column("set_id", sa.Integer, sa.ForeignKey("sets.id"), nullable=False),
        sa.Column("idx", sa.BigInteger, nullable=False),
        sa.Column("record_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("hash_key", sa.LargeBinary, nullable=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("revoked_by", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("set_id", "idx"),
        sa.UniqueConstraint("set_id", "record_id", name="uq_records_set_record"),
    )
    op.create_index("ix_records_hash_key", "records", ["hash_key", "set_id"])
    op.create_table(
        "tiles",
        sa.Column("set_id", sa.Integer, sa.ForeignKey("sets.id"), nullable=False),
        sa.Column("level", sa.SmallInteger, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("set_id", "level", "n"),
    )
    op.create_table(
        "checkpoints",
        sa.Column("set_id", sa.Integer, sa.ForeignKey("sets.id"), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("note", sa.LargeBinary, nullable=False),
        sa.Column("created", sa.String(20), nullable=False),
        sa.PrimaryKeyConstraint("set_id", "size"),
    )


def downgrade() -> None:
    op.drop_table("checkpoints")
    op.drop_table("tiles")
    op.drop_index("ix_records_hash_key", table_name="records")
    op.drop_table("records")
    op.drop_table("sets")

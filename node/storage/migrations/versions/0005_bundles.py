"""Full entry bundles stored as written, so serving one is a single-row read.

Revision ID: 0005
Revises: 0004

The upgrade also writes the bundles of existing sets (one pass over their records, a block at a
time, so memory stays flat). The encoding is written out here rather than imported, so that this
migration keeps meaning what it meant when it was written.
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
    conn = op.get_bind()
    for set_id, size in conn.execute(sa.text("SELECT id, size FROM sets")).all():
        for n in range(int(size) // 256):
            rows = conn.execute(
                sa.text(
                    "SELECT data FROM records WHERE set_id = :s AND idx >= :a AND idx < :b"
                    " ORDER BY idx"
                ),
                {"s": set_id, "a": n * 256, "b": n * 256 + 256},
            ).all()
            # c2sp.org/tlog-tiles entry bundle: each entry as uint16 big-endian length + bytes
            bundle = b"".join(len(d).to_bytes(2, "big") + bytes(d) for (d,) in rows)
            conn.execute(
                sa.text("INSERT INTO bundles (set_id, n, data) VALUES (:s, :n, :d)"),
                {"s": set_id, "n": n, "d": bundle},
            )


def downgrade() -> None:
    op.drop_table("bundles")

"""A leaf's bytes are stored once: ``records.data`` is NULL for leaves held in a full bundle.

Revision ID: 0006
Revises: 0005

Since revision 0005 every full block of 256 leaves is also kept as one ``bundles`` row, so the
leaf bytes of a large set were stored twice (on a 1M-entry set, ~550 MB of the database). From
this revision on, an append that completes a bundle writes the bundle and leaves ``data`` NULL on
those records, in the same transaction; readers take such a leaf from its bundle.

The upgrade only drops the NOT NULL constraint (on SQLite a table copy, done once). Records stored
earlier keep their bytes: both forms read the same, and clearing them would not shrink a SQLite
file without a VACUUM, which the operator can run when convenient.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.alter_column("data", existing_type=sa.LargeBinary, nullable=True)


def downgrade() -> None:
    # Put every leaf's bytes back on its record before the constraint returns.
    conn = op.get_bind()
    for set_id, n, data in conn.execute(
        sa.text(
            "SELECT b.set_id, b.n, b.data FROM bundles b WHERE EXISTS (SELECT 1 FROM records r"
            " WHERE r.set_id = b.set_id AND r.idx >= b.n * 256 AND r.idx < b.n * 256 + 256"
            " AND r.data IS NULL)"
        )
    ).all():
        data, pos, idx = bytes(data), 0, int(n) * 256
        while pos < len(data):
            length = int.from_bytes(data[pos : pos + 2], "big")
            conn.execute(
                sa.text("UPDATE records SET data = :d WHERE set_id = :s AND idx = :i"),
                {"d": data[pos + 2 : pos + 2 + length], "s": set_id, "i": idx},
            )
            pos, idx = pos + 2 + length, idx + 1
    with op.batch_alter_table("records") as batch:
        batch.alter_column("data", existing_type=sa.LargeBinary, nullable=False)

"""Evidence rows keep the consistency path that makes a two-size fork provable offline.

Revision ID: 0007
Revises: 0006

``evidence.path``: the larger tree's consistency path (32-byte hashes, concatenated) that
:mod:`protocol.equivocation` needs to prove that two checkpoints of different sizes fork; empty
when the two notes prove it alone (one size, two roots); NULL when the row proves no
equivocation (a rollback). Rows kept before this revision get an empty path when their two
notes are checkpoints of one size with two roots (the only proof they can hold), else NULL.
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
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT id, note_a, note_b FROM evidence WHERE note_a IS NOT NULL AND note_b IS NOT NULL"
    )).all()
    for row_id, a, b in rows:
        if _same_size_fork(bytes(a), bytes(b)):
            conn.execute(sa.text("UPDATE evidence SET path = :p WHERE id = :i"),
                         {"p": b"", "i": row_id})


def _same_size_fork(a: bytes, b: bytes) -> bool:
    """Two checkpoint notes of one size with two roots (their signatures were checked when
    the row was kept, and the proof's verifier checks them again)."""
    from protocol.checkpoint import parse_checkpoint
    from protocol.errors import ProtocolError
    from protocol.note import split_note

    try:
        x, y = parse_checkpoint(split_note(a)[0]), parse_checkpoint(split_note(b)[0])
    except ProtocolError:
        return False
    return x.size == y.size and x.root_hash != y.root_hash


def downgrade() -> None:
    op.drop_column("evidence", "path")

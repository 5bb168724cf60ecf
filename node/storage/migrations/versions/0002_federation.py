"""Federation: mirror sets, grants, trust anchors, nonces, evidence, re-shares, attestations.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, no batch (table copy) mode: SQLite adds columns in place, and a table copy
    # would have to drop `sets`, which the foreign keys of existing records forbid. SQLite does not
    # enforce VARCHAR lengths, so only PostgreSQL needs the wider name column.
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("sets", "name", type_=sa.String(200), existing_type=sa.String(64))
    op.add_column("sets", sa.Column("kind", sa.String(16), nullable=False, server_default="local"))
    for name, type_ in (
        ("remote_url", sa.Text()),
        ("remote_org", sa.String(64)),
        ("remote_set", sa.String(64)),
        ("reshare_into", sa.String(64)),
        ("sync_error", sa.Text()),
        ("synced_at", sa.String(20)),
    ):
        op.add_column("sets", sa.Column(name, type_, nullable=True))
    op.create_table(
        "set_grants",
        sa.Column("set_id", sa.Integer, sa.ForeignKey("sets.id"), nullable=False),
        sa.Column("org", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("set_id", "org"),
    )
    op.create_table(
        "trust",
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("vkey", sa.Text, nullable=False),
        sa.Column("created", sa.String(20), nullable=False),
        sa.PrimaryKeyConstraint("org", "kind"),
    )
    op.create_table(
        "seen_nonces",
        sa.Column("keyid", sa.String(200), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("expires", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("keyid", "nonce"),
    )
    op.create_index("ix_seen_nonces_expires", "seen_nonces", ["expires"])
    op.create_table(
        "evidence",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("origin", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("note_a", sa.LargeBinary, nullable=True),
        sa.Column("note_b", sa.LargeBinary, nullable=True),
        sa.Column("created", sa.String(20), nullable=False),
    )
    op.create_table(
        "reshares",
        sa.Column("set_id", sa.Integer, sa.ForeignKey("sets.id"), nullable=False),
        sa.Column("idx", sa.BigInteger, nullable=False),
        sa.Column("upstream_origin", sa.String(200), nullable=False),
        sa.Column("upstream_record", sa.String(32), nullable=False),
        sa.Column("receipt", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("set_id", "idx"),
    )
    op.create_index(
        "ix_reshares_upstream", "reshares", ["upstream_origin", "upstream_record"]
    )
    op.create_table(
        "attestation_view",
        sa.Column("set_id", sa.Integer, sa.ForeignKey("sets.id"), nullable=False),
        sa.Column("idx", sa.BigInteger, nullable=False),
        sa.Column("target_origin", sa.String(200), nullable=False),
        sa.Column("target_record", sa.String(32), nullable=False),
        sa.Column("attester", sa.String(64), nullable=False),
        sa.Column("opinion", sa.String(16), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("set_id", "idx"),
    )
    op.create_index(
        "ix_attestation_target", "attestation_view", ["target_origin", "target_record"]
    )


def downgrade() -> None:
    op.drop_table("attestation_view")
    op.drop_table("reshares")
    op.drop_table("evidence")
    op.drop_table("seen_nonces")
    op.drop_table("trust")
    op.drop_table("set_grants")
    for col in ("synced_at", "sync_error", "reshare_into", "remote_set", "remote_org",
                "remote_url", "kind"):
        op.drop_column("sets", col)
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("sets", "name", type_=sa.String(64), existing_type=sa.String(200))

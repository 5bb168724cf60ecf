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
    with op.batch_alter_table("sets") as batch:
        batch.alter_column("name", type_=sa.String(200), existing_type=sa.String(64))
        batch.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default="local")
        )
        batch.add_column(sa.Column("remote_url", sa.Text, nullable=True))
        batch.add_column(sa.Column("remote_org", sa.String(64), nullable=True))
        batch.add_column(sa.Column("remote_set", sa.String(64), nullable=True))
        batch.add_column(sa.Column("reshare_into", sa.String(64), nullable=True))
        batch.add_column(sa.Column("sync_error", sa.Text, nullable=True))
        batch.add_column(sa.Column("synced_at", sa.String(20), nullable=True))
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
    with op.batch_alter_table("sets") as batch:
        for col in ("synced_at", "sync_error", "reshare_into", "remote_set", "remote_org",
                    "remote_url", "kind"):
            batch.drop_column(col)
        batch.alter_column("name", type_=sa.String(64), existing_type=sa.String(200))

"""SQLAlchemy Core tables of a node's database (the migrations create exactly these).

The log is the truth: ``records`` holds every leaf by index (its exact bytes, or NULL when
they are in the leaf's full entry bundle in ``bundles``), ``tiles`` the tlog-tiles
hash tiles, ``checkpoints`` every signed checkpoint. The columns ``records.hash_key`` and
``records.revoked_by`` are the derived "current state" view, kept up to date in the same transaction
as the append that changes them, so a lookup is one indexed query.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

sets = Table(
    "sets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("origin", String(200), nullable=False, unique=True),
    # "local": this node's own log; "mirror": a verified copy of a partner's log (migration 0002)
    Column("kind", String(16), nullable=False, default="local"),
    # mirrors only: where the partner serves it, its org and set name, and where to re-share it
    Column("remote_url", Text, nullable=True),
    Column("remote_org", String(64), nullable=True),
    Column("remote_set", String(64), nullable=True),
    Column("reshare_into", String(64), nullable=True),
    # mirrors only: JSON of node.federation.reshare.ResharePolicy (migration 0004)
    Column("reshare_policy", Text, nullable=True),
    Column("sync_error", Text, nullable=True),
    Column("synced_at", String(20), nullable=True),
    Column("description", Text, nullable=False, default=""),
    Column("tlp", String(16), nullable=False),
    Column("created", String(20), nullable=False),
    # size of the log: records 0..size-1 exist and their tiles are written
    Column("size", BigInteger, nullable=False, default=0),
    # RFC 9162 root of the first `size` records
    Column("root", LargeBinary, nullable=False),
    # latest signed checkpoint (note bytes) and the size it commits to (<= size)
    Column("checkpoint", LargeBinary, nullable=True),
    Column("checkpoint_size", BigInteger, nullable=False, default=0),
)

records = Table(
    "records",
    metadata,
    Column("set_id", Integer, ForeignKey("sets.id"), nullable=False),
    Column("idx", BigInteger, nullable=False),
    Column("record_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    # first 16 bytes of SHA-256("type:value") of an entry's hash; NULL for other kinds
    Column("hash_key", LargeBinary, nullable=True),
    # the exact leaf bytes (RFC 8785 canonical JSON of the record)
    Column("data", LargeBinary, nullable=False),
    # derived view: index of the revocation that withdrew this entry, if any
    Column("revoked_by", BigInteger, nullable=True),
    PrimaryKeyConstraint("set_id", "idx"),
    UniqueConstraint("set_id", "record_id", name="uq_records_set_record"),
)
Index("ix_records_hash_key", records.c.hash_key, records.c.set_id)

tiles = Table(
    "tiles",
    metadata,
    Column("set_id", Integer, ForeignKey("sets.id"), nullable=False),
    Column("level", SmallInteger, nullable=False),
    Column("n", BigInteger, nullable=False),
    # concatenated 32-byte hashes; width = len(data) // 32 (256 for a full tile)
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("set_id", "level", "n"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("set_id", Integer, ForeignKey("sets.id"), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("note", LargeBinary, nullable=False),
    Column("created", String(20), nullable=False),
    PrimaryKeyConstraint("set_id", "size"),
)

# ---------------------------------------------------------------------------------------------
# Federation (migration 0002)
# ---------------------------------------------------------------------------------------------
# A mirror is a set whose log is a verified copy of a partner's log (same indices, same bytes, same
# root); sets.kind says which. Its name is "<partner org>:<remote set>" (a colon never appears in
# local set names), its origin the partner's log origin, its checkpoint the partner's signed note.

set_grants = Table(
    "set_grants",
    metadata,
    Column("set_id", Integer, ForeignKey("sets.id"), nullable=False),
    Column("org", String(64), nullable=False),
    PrimaryKeyConstraint("set_id", "org"),
)

# Trust anchors: coordinators whose membership logs we follow, and partners pinned directly.
trust = Table(
    "trust",
    metadata,
    Column("org", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # "coordinator" | "partner"
    Column("url", Text, nullable=False),
    Column("vkey", Text, nullable=False),
    Column("created", String(20), nullable=False),
    PrimaryKeyConstraint("org", "kind"),
)

# RFC 9421 replay protection shared by every node process on one database.
seen_nonces = Table(
    "seen_nonces",
    metadata,
    Column("keyid", String(200), nullable=False),
    Column("nonce", String(64), nullable=False),
    Column("expires", BigInteger, nullable=False),
    PrimaryKeyConstraint("keyid", "nonce"),
)
Index("ix_seen_nonces_expires", seen_nonces.c.expires)

# Signed statements that prove misbehaviour (forks, rollbacks, bad tiles): kept forever.
evidence = Table(
    "evidence",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("origin", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("note_a", LargeBinary, nullable=True),
    Column("note_b", LargeBinary, nullable=True),
    Column("created", String(20), nullable=False),
    # the consistency path proving a two-size fork (hashes concatenated), b"" when the notes
    # alone prove it, NULL when the row proves no equivocation (revision 0007)
    Column("path", LargeBinary, nullable=True),
)

# Entries this node re-shared: which upstream record each came from, and its receipt (JSON).
reshares = Table(
    "reshares",
    metadata,
    Column("set_id", Integer, ForeignKey("sets.id"), nullable=False),
    Column("idx", BigInteger, nullable=False),
    Column("upstream_origin", String(200), nullable=False),
    Column("upstream_record", String(32), nullable=False),
    Column("receipt", LargeBinary, nullable=False),
    PrimaryKeyConstraint("set_id", "idx"),
)
Index("ix_reshares_upstream", reshares.c.upstream_origin, reshares.c.upstream_record)

# Derived view: attestations about entries, from every log this node holds.
attestation_view = Table(
    "attestation_view",
    metadata,
    Column("set_id", Integer, ForeignKey("sets.id"), nullable=False),
    Column("idx", BigInteger, nullable=False),
    Column("target_origin", String(200), nullable=False),
    Column("target_record", String(32), nullable=False),
    Column("attester", String(64), nullable=False),
    Column("opinion", String(16), nullable=False),
    Column("count", BigInteger, nullable=True),
    PrimaryKeyConstraint("set_id", "idx"),
)
Index("ix_attestation_target", attestation_view.c.target_origin, attestation_view.c.target_record)

# ---------------------------------------------------------------------------------------------
# Witnesses (migration 0003), used by node.witness
# ---------------------------------------------------------------------------------------------

# Logs this node witnesses (c2sp.org/tlog-witness: "configured with a list of supported log
# public keys"), one key per origin.
witness_logs = Table(
    "witness_logs",
    metadata,
    Column("origin", String(200), primary_key=True),
    Column("vkey", Text, nullable=False),
    Column("created", String(20), nullable=False),
)

# The latest checkpoint this witness cosigned per origin: the largest consistent tree it has seen.
# A row exists from add-log on (size 0, empty root, no note), so that add-checkpoint can always
# lock an existing row for its compare-and-swap.
witness_state = Table(
    "witness_state",
    metadata,
    Column("origin", String(200), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary, nullable=False),
    Column("note", LargeBinary, nullable=True),
    Column("updated", String(20), nullable=False),
)

# Witnesses this node asks to cosign its own checkpoints.
witness_peers = Table(
    "witness_peers",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("vkey", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("created", String(20), nullable=False),
)

# Subscriber policy: a mirror (or "*" for every mirror) needs `quorum` cosignatures from these
# witnesses (newline-separated cosignature vkeys) before sync accepts a checkpoint.
witness_quorums = Table(
    "witness_quorums",
    metadata,
    Column("set_name", String(200), primary_key=True),
    Column("quorum", Integer, nullable=False),
    Column("vkeys", Text, nullable=False),
    Column("created", String(20), nullable=False),
)


# Mirror entries held back from re-sharing until enough organisations attest them (migration 0004).
reshare_pending = Table(
    "reshare_pending",
    metadata,
    Column("set_id", Integer, ForeignKey("sets.id"), nullable=False),
    Column("idx", BigInteger, nullable=False),
    PrimaryKeyConstraint("set_id", "idx"),
)

# Full (256-entry) entry bundles, written in the append transaction that completes them
# (migration 0005): immutable, served as one row. Partial bundles are built from `records`.
bundles = Table(
    "bundles",
    metadata,
    Column("set_id", Integer, ForeignKey("sets.id"), nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("set_id", "n"),
)

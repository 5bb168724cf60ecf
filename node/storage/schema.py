"""SQLAlchemy Core tables of a node's database (the migrations create exactly these).

The log is the truth: ``records`` holds every leaf's exact bytes by index, ``tiles`` the tlog-tiles
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
    Column("name", String(64), nullable=False, unique=True),
    Column("origin", String(200), nullable=False, unique=True),
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

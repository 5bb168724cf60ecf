"""The node's storage interface: what every backend promises, in writing.

One implementation, :class:`node.storage.sql.SqlStore`, serves both SQLite (embedded default) and
PostgreSQL (several node processes sharing one database). Tests run the same suite on both.

Contract of :class:`Store` (every backend must keep all of it):

* **Durability.** When ``append`` returns, its records, their tiles, the new size and root are
  committed in one transaction: a crash or ``kill -9`` at any moment leaves either all of it or none
  of it. Nothing acknowledged is lost; nothing is stored twice.
* **One sequencer at a time.** ``append`` and ``store_checkpoint`` hold an exclusive lock on the set
  for the length of their transaction (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE``
  on SQLite), so two processes can never assign the same index or sign two checkpoints for one size.
* **Append-only.** A record's bytes and index never change once committed. Only the derived view
  column (``revoked_by``) of an entry is ever updated, in the same transaction as the revocation.
  (Where the bytes are kept may change: the transaction that completes a 256-leaf entry bundle
  stores the bundle and clears the bytes from the leaves' rows, so each leaf is stored once.
  Every read returns the same bytes before and after.)
* **All or nothing per call.** If any revocation in ``items`` does not target an active entry of
  the set, ``append`` raises :class:`node.errors.Conflict` and stores nothing.
* **Idempotent entries.** An entry whose hash is already active in the set (or earlier in the same
  call) is not appended again; its result says ``duplicate`` with the existing index.
* **Checkpoints follow the tree.** ``store_checkpoint`` signs exactly the stored (size, root), and
  only when the size grew past the last checkpoint; checkpoints are kept forever.
* **Cancelling a caller does not cut a write.** A write call that has started runs to its commit or
  rollback even if the task awaiting it is cancelled (the caller sees ``CancelledError`` at once),
  and ``close`` waits for such writes before it releases the database (SqlStore:
  ``shielded_write``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec

from protocol.merkle import HASH_SIZE, leaf_hash
from protocol.records import Attestation, Entry, Membership, Revocation, encode_record
from protocol.scan import AttestationView, EntryView, RecordView, RevocationView
from protocol.tiles import TILE_WIDTH, TileRef

AnyRecord = Entry | Revocation | Attestation | Membership


def hash_key(hash_type: str, hash_value: str) -> bytes:
    """The lookup key of a hash: first 16 bytes of SHA-256("type:value").

    Fixed-size so that a 6,900-character vPDQ value indexes as cheaply as an MD5.
    """
    return hashlib.sha256(hash_key_prefix(hash_type) + hash_value.encode()).digest()[:16]


def hash_key_prefix(hash_type: str) -> bytes:
    """What :func:`hash_key` hashes before the value, for callers that hold many values of one
    type as bytes (node.federation.prepare)."""
    return hash_type.encode() + b":"


@dataclass(frozen=True)
class SetInfo:
    id: int
    name: str
    origin: str
    description: str
    tlp: str
    created: str
    size: int
    root: bytes
    checkpoint: bytes | None
    checkpoint_size: int
    #: "local" (this node's own log) or "mirror" (a verified copy of a partner's log)
    kind: str = "local"
    remote_url: str | None = None
    remote_org: str | None = None
    remote_set: str | None = None
    reshare_into: str | None = None
    #: JSON of node.federation.reshare.ResharePolicy, or None (re-share every active entry)
    reshare_policy: str | None = None


class EntryRef(msgspec.Struct, frozen=True, gc=False):
    """All the append transaction reads of an entry whose bytes were validated moments ago.

    Bulk paths (a direct import, a mirror's sync) keep tens of thousands of entries in one
    transaction; a model or view per entry would cost ~1.3 KB each, this costs a few dozen bytes.
    A frozen msgspec struct untracked by the garbage collector (it holds only strings, so it can
    be in no reference cycle): see PreparedRecord.
    """

    id: str
    type: Literal["entry"] = "entry"


class PreparedRecord(msgspec.Struct, frozen=True, gc=False):
    """A validated record with everything the append transaction needs, computed outside it.

    ``record`` is the pydantic model, a :mod:`protocol.scan` view of the very same bytes (same
    attribute names), or for an entry on a bulk path just its :class:`EntryRef`.

    A frozen msgspec struct that the garbage collector does not track: bulk paths hold a batch of
    up to 32k of them, and as tracked objects (a slots dataclass) they made Python's full
    collections walk the whole batch again and again: ~11 s of a 1M-leaf sync (60 s -> 49 s
    with collection off). It refers to a record and bytes, never back to anything that refers
    to it, so it can be in no reference cycle.
    """

    record: AnyRecord | RecordView | EntryRef
    data: bytes
    leaf_hash: bytes
    hash_key: bytes | None

    @classmethod
    def of(cls, record: AnyRecord, data: bytes | None = None) -> PreparedRecord:
        data = encode_record(record) if data is None else data
        key = hash_key(record.hash.type, record.hash.value) if isinstance(record, Entry) else None
        return cls(record=record, data=data, leaf_hash=leaf_hash(data), hash_key=key)

    @classmethod
    def bulk(cls, record: RecordView, data: bytes) -> PreparedRecord:
        """Like :meth:`of` for a view of ``data``, keeping only an EntryRef of an entry."""
        if not isinstance(record, EntryView):
            return cls(record=record, data=data, leaf_hash=leaf_hash(data), hash_key=None)
        return cls(
            record=EntryRef(record.id),
            data=data,
            leaf_hash=leaf_hash(data),
            hash_key=hash_key(record.hash.type, record.hash.value),
        )


# What kind of record a bulk path holds, for isinstance: prebuilt tuples, because a ``A | B``
# union written inline in a loop is built anew on every iteration (~60 ms per 32k records).
ENTRY_TYPES = (Entry, EntryView, EntryRef)
REVOCATION_TYPES = (Revocation, RevocationView)
ATTESTATION_TYPES = (Attestation, AttestationView)

#: a ``records`` row as an append inserts it: (index, record id, kind, hash key or None, leaf
#: bytes or None when the leaf's entry bundle holds them; see SqlStore._write_out)
RecordRow = tuple[int, str, str, bytes | None, bytes | None]


class MirrorLeaves(msgspec.Struct, frozen=True, gc=False):
    """Consecutive verified leaves of a partner's log, in the form ``append_mirror`` stores them.

    A sync builds one per fetched entry bundle without a Python object per leaf beyond its row:
    the worker process that checked the records (node.federation.prepare) made the rows, and
    ``records`` lists only the leaves that are not entries (revocations, attestations,
    memberships: ~1%), which the append transaction checks. With ``bundle`` (a whole, aligned
    256-leaf block) the rows carry no leaf bytes: the store keeps ``bundle`` itself, exactly as
    fetched, and ``root`` as that block's subtree hash, both verified by the sync against the
    partner's signed tree (the store does not check them again).

    Untracked by the garbage collector like PreparedRecord: it holds rows of strings and bytes
    and views, never anything that refers back to it.
    """

    start: int
    rows: list[RecordRow]
    hashes: bytes  # the leaves' hashes, concatenated
    records: list[tuple[int, AnyRecord | RecordView]]
    bundle: bytes | None = None
    root: bytes | None = None

    def __post_init__(self) -> None:
        n = len(self.rows)
        if len(self.hashes) != HASH_SIZE * n or (n and self.rows[0][0] != self.start):
            raise ValueError("MirrorLeaves: rows and hashes do not line up")
        if self.bundle is not None and (
            n != TILE_WIDTH or self.start % TILE_WIDTH or self.root is None
            or self.rows[-1][4] is not None
        ):
            raise ValueError("MirrorLeaves: a bundle needs a whole aligned block without bytes")

    @classmethod
    def of(cls, start: int, items: Sequence[PreparedRecord]) -> MirrorLeaves:
        """The same leaves, from PreparedRecords (tests and small callers); no bundle given."""
        rows: list[RecordRow] = []
        records: list[tuple[int, AnyRecord | RecordView]] = []
        for i, it in enumerate(items, start):
            rec = it.record
            rows.append((i, rec.id, rec.type, it.hash_key, it.data))
            if not isinstance(rec, ENTRY_TYPES):
                records.append((i, rec))
        return cls(start, rows, b"".join(it.leaf_hash for it in items), records)


def spooled_entry(record_id: str, data: bytes, key: bytes) -> PreparedRecord:
    """A PreparedRecord for an entry this process built and validated moments ago.

    Only for the CLI's two-pass import: pass 1 builds and validates every entry and spools its
    canonical bytes to a private temporary file; pass 2 appends them without paying for
    validation again.
    """
    return PreparedRecord(record=EntryRef(record_id), data=data, leaf_hash=leaf_hash(data),
                          hash_key=key)


@dataclass(frozen=True)
class AppendResult:
    status: Literal["appended", "duplicate"]
    index: int
    record_id: str


@dataclass(frozen=True)
class StoredRecord:
    set_name: str
    origin: str
    index: int
    data: bytes
    revoked_by: int | None


#: signs checkpoint text for a set: (set origin, size, root) -> signed note bytes
CheckpointSigner = Callable[[str, int, bytes], bytes]


class Store(Protocol):
    """Persistent state of a node. See the module docstring for the contract."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""

    async def create_set(self, name: str, origin: str, tlp: str, description: str) -> SetInfo:
        """Create an empty set; Conflict if the name or origin is taken."""

    async def get_set(self, name: str, kind: str | None = "local") -> SetInfo:
        """The set called ``name`` (of that kind; None = any); NotFound otherwise."""

    async def list_sets(self, kind: str | None = "local") -> list[SetInfo]:
        """Sets of that kind (None = all), by name."""

    async def append(self, set_name: str, items: Sequence[PreparedRecord]) -> list[AppendResult]:
        """Append records to the set's log (see contract). One result per item, in order."""

    async def store_checkpoint(self, set_name: str, sign: CheckpointSigner) -> bytes | None:
        """Sign and store a checkpoint if the tree grew; returns the new note, or None."""

    async def checkpoint_at(self, set_id: int, size: int) -> bytes | None:
        """The stored checkpoint note for exactly ``size``, if one was signed."""

    async def read_tiles(self, set_id: int, refs: Sequence[TileRef]) -> dict[TileRef, bytes]:
        """Hash tiles, each cut to ``ref.width`` hashes; refs the store cannot fill are absent."""

    async def read_entries(self, set_id: int, start: int, count: int) -> list[bytes]:
        """Leaf data of records ``start .. start+count-1`` (fewer if the log is shorter)."""

    async def read_bundle(self, set_id: int, n: int) -> bytes | None:
        """Full entry bundle ``n`` as stored by the append that completed it, if any."""

    async def find_entries(
        self, key: bytes, set_ids: Sequence[int] | None = None
    ) -> list[StoredRecord]:
        """Every entry with this hash key (in the given sets, or all), active or revoked."""

    async def get_record(self, set_id: int, record_id: str) -> StoredRecord | None: ...

    async def get_record_at(self, set_id: int, index: int) -> StoredRecord | None: ...

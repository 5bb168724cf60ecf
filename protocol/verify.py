"""Offline verification for auditors and the sync client: records, checkpoints, proofs, logs.

Every function here is pure (no network, no database, no files) and either returns the verified
object (or ``None``) or raises exactly one :class:`~protocol.errors.ProtocolError` subclass whose
message names what failed: which leaf index, which record, which checkpoint.

* :func:`verify_record` — one leaf's bytes are a valid record in canonical form;
* :func:`verify_checkpoint_note` — a signed checkpoint (log signature, optional witness quorum);
* :func:`verify_inclusion_of` / :func:`verify_consistency_of` — RFC 9162 proofs against checkpoints,
  with rollbacks and same-size forks reported as :class:`~protocol.errors.InconsistentTreeError`;
* :func:`check_fork` — two signed notes that prove a split view;
* :class:`LogAuditor` / :func:`verify_log` — stream a whole log in O(log n) tree state, validate
  every record and the log's revocation rules, and compare the recomputed root with a checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from binascii import unhexlify
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from protocol import merkle
from protocol.checkpoint import Checkpoint, CosignatureVerifier, verify_checkpoint
from protocol.errors import (
    FormatError,
    InconsistentTreeError,
    ProofError,
    RecordTooLargeError,
    VerificationError,
)
from protocol.note import Verifier
from protocol.scan import (
    _PLAIN_HEX,
    EntryFacts,
    EntryShapes,
    EntryView,
    RevocationView,
    scan_record,
)
from protocol.tiles import TILE_WIDTH

__all__ = [
    "AuditSummary",
    "LogAuditor",
    "ScannedBundle",
    "check_fork",
    "scan_bundle",
    "verify_checkpoint_note",
    "verify_consistency_of",
    "verify_inclusion_of",
    "verify_log",
    "verify_record",
]

if TYPE_CHECKING:
    from protocol.records import Attestation, Entry, Membership, Revocation

    Record: TypeAlias = Entry | Revocation | Attestation | Membership


def verify_record(data: bytes) -> Record:
    """Decode one leaf: a valid record in exact RFC 8785 canonical form, else FormatError.

    RecordTooLargeError (a FormatError) for leaves over the size limit.
    """
    # Imported here: the pydantic models are not needed to audit a clean log (see scan.py).
    from protocol.records import decode_record

    if not isinstance(data, bytes | bytearray):
        raise FormatError("record data must be bytes", field="data")
    return decode_record(bytes(data))


def verify_checkpoint_note(
    note: bytes,
    log: Verifier,
    *,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int = 0,
) -> Checkpoint:
    """Verify a signed checkpoint note with the log's key (and a witness quorum); return it.

    The origin line must equal the log key's name. SignatureError or FormatError otherwise (see
    :func:`protocol.checkpoint.verify_checkpoint`, which this wraps so that auditors need one
    import).
    """
    return verify_checkpoint(note, log, witnesses=witnesses, quorum=quorum)


def verify_inclusion_of(data: bytes, index: int, cp: Checkpoint, proof: Sequence[bytes]) -> None:
    """Check that the leaf ``data`` (record bytes, not a hash) is leaf ``index`` of ``cp``'s tree.

    FormatError for malformed input (an index outside the tree, a proof hash of the wrong length);
    ProofError if the proof does not lead to ``cp.root_hash``.
    """
    if not isinstance(data, bytes | bytearray):
        raise FormatError("leaf data must be bytes", field="data")
    where = f"leaf {index} of {cp.origin} at size {cp.size}"
    try:
        merkle.verify_inclusion(merkle.leaf_hash(bytes(data)), index, cp.size, proof, cp.root_hash)
    except ProofError as e:
        raise ProofError(f"inclusion proof for {where} does not verify: {e.message}") from e
    except FormatError as e:
        raise FormatError(f"cannot check inclusion of {where}: {e.message}", field=e.field) from e


def verify_consistency_of(old: Checkpoint, new: Checkpoint, proof: Sequence[bytes]) -> None:
    """Check that ``new`` extends ``old``: the same log, grown only by appending.

    * different origins: ProofError (no proof can link two logs; the caller mixed them up);
    * ``old.size > new.size``: InconsistentTreeError (a rollback);
    * equal sizes with different roots: InconsistentTreeError (a fork);
    * otherwise the RFC 9162 consistency proof must verify, else ProofError.

    The InconsistentTreeError carries no evidence: this function sees parsed checkpoints, not the
    signed notes, so the caller attaches the notes it holds (see :func:`check_fork`).
    """
    if old.origin != new.origin:
        raise ProofError(
            f"cannot prove consistency between two logs: {old.origin!r} and {new.origin!r}"
        )
    if old.size > new.size:
        raise InconsistentTreeError(
            f"rollback in {new.origin}: a checkpoint of size {new.size} after one of size "
            f"{old.size}"
        )
    if old.size == new.size and old.root_hash != new.root_hash:
        raise InconsistentTreeError(
            f"fork in {new.origin}: two different roots for tree size {new.size}"
        )
    try:
        merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
    except ProofError as e:
        raise ProofError(
            f"consistency proof of {new.origin} from size {old.size} to {new.size} does not "
            f"verify: {e.message}"
        ) from e
    except FormatError as e:
        raise FormatError(
            f"malformed consistency proof of {new.origin} from size {old.size} to {new.size}: "
            f"{e.message}",
            field=e.field,
        ) from e


def check_fork(a_note: bytes, b_note: bytes, log: Verifier) -> None:
    """Raise InconsistentTreeError if two validly signed checkpoints of one size differ in root.

    Both notes must verify with ``log`` (SignatureError or FormatError naming note "a" or "b"
    otherwise); their origins are then both ``log.name``. The error's ``evidence`` is the pair of
    notes exactly as given: self-contained proof of a split view that anyone can check.
    Checkpoints of different sizes are not evidence by themselves (use a consistency proof).
    """
    cps = []
    for label, note in (("a", a_note), ("b", b_note)):
        try:
            cps.append(verify_checkpoint_note(note, log))
        except (FormatError, VerificationError) as e:
            if isinstance(e, InconsistentTreeError):
                raise
            raise type(e)(f"checkpoint {label}: {e.message}", field=e.field) from e
    a, b = cps
    if a.size == b.size and a.root_hash != b.root_hash:
        raise InconsistentTreeError(
            f"fork in {a.origin}: two validly signed checkpoints of size {a.size} with "
            "different roots",
            evidence=(bytes(a_note), bytes(b_note)),
            path=(),  # the two notes alone prove it
        )


def _frozen_counts(counts: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(sorted(counts.items())))


@dataclass(frozen=True)
class AuditSummary:
    """What a successful audit of a whole log found. All counts are over the ``size`` leaves."""

    origin: str
    size: int
    root_hash: bytes
    #: records per type ("entry", "revocation", "attestation", "membership")
    record_types: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: entries per hash type ("pdq", "md5", ...)
    hash_types: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: revocations per reason
    revocation_reasons: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: entries per label
    labels: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: records per author organisation
    authors: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    entries: int = 0
    revoked: int = 0

    @property
    def active(self) -> int:
        """Entries not revoked (expiry is not applied: it depends on the reader's clock)."""
        return self.entries - self.revoked

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view (root hash as hex)."""
        return {
            "origin": self.origin,
            "size": self.size,
            "root_hash": self.root_hash.hex(),
            "entries": self.entries,
            "revoked": self.revoked,
            "active": self.active,
            "record_types": dict(self.record_types),
            "hash_types": dict(self.hash_types),
            "revocation_reasons": dict(self.revocation_reasons),
            "labels": dict(self.labels),
            "authors": dict(self.authors),
        }


#: plain-hex values up to this many digits are their own key (see _hash_key)
_RAW_KEY_HEX = 64


def _raw_key_prefix(hash_type: str) -> bytes | None:
    """What precedes the value's bytes in _hash_key's exact form for this type; None if the type
    takes the digest form."""
    n = _PLAIN_HEX.get(hash_type)
    return hash_type.encode() + b"\n" if n is not None and n <= _RAW_KEY_HEX else None


def _hash_key(hash_type: str, hash_value: str) -> bytes:
    """Bytes standing for an entry's (valid) hash, so a revocation's ``target_hash`` can be
    compared with it.

    A plain-hex type of at most 32 bytes (md5, sha1, sha256, pdq...) is kept exactly: its name,
    a newline and the value's bytes. That costs no hashing, which the audit of a large log
    notices, and at most 37 bytes. Any other type (vPDQ values run to kilobytes) is a zero byte
    and 16 bytes of SHA-256 over name and value, which bounds the memory (128 bits: a log
    operator cannot grind a colliding pair). A type name never starts with a zero byte, so the
    two forms cannot collide.
    """
    prefix = _raw_key_prefix(hash_type)
    if prefix is not None:
        return prefix + bytes.fromhex(hash_value)
    return b"\x00" + hashlib.sha256(f"{hash_type}\n{hash_value}".encode()).digest()[:16]


#: what the log-level checks need from one record: (type, author, detail), picklable
RecordFacts = tuple[str, str, tuple[Any, ...]]
#: one bundle decoded: facts of the valid leading records, their leaf hashes, and the error of
#: the first invalid record as (error class name, message, field), or None
DecodedBundle = tuple[list[RecordFacts], list[bytes], tuple[str, str, str | None] | None]


def record_facts(data: bytes) -> RecordFacts:
    """Validate one leaf and keep only what the log-level checks use.

    Accepts and refuses exactly what :func:`verify_record` does, through
    :func:`protocol.scan.scan_record`: the audit's per-leaf check, so it takes the fast path.
    """
    if not isinstance(data, bytes | bytearray):
        raise FormatError("record data must be bytes", field="data")
    record = scan_record(bytes(data))
    if isinstance(record, EntryView):
        h = record.hash
        return "entry", record.author, (record.id, h.type, _hash_key(h.type, h.value),
                                        tuple(record.labels))
    if isinstance(record, RevocationView):
        return "revocation", record.author, _revocation_detail(record)
    return record.type, record.author, ()


def _revocation_detail(record: RevocationView) -> tuple[Any, ...]:
    ref = record.target_hash
    return (
        record.id, record.target, ref.type, ref.value[:16], _hash_key(ref.type, ref.value),
        record.role, record.reason,
    )


def decode_bundle(entries: Sequence[bytes]) -> DecodedBundle:
    """Record checks and leaf hashes of a run of leaves, stopping at the first invalid one.

    A pure function of its input, so it can run in a worker process (see protocol.audit).
    """
    facts: list[RecordFacts] = []
    hashes: list[bytes] = []
    sha = hashlib.sha256
    for data in entries:
        try:
            facts.append(record_facts(data))
        except FormatError as e:
            return facts, hashes, (type(e).__name__, e.message, e.field)
        hashes.append(sha(b"\x00" + data).digest())
    return facts, hashes, None


#: the most leaves an audit takes (a bound far beyond any log, checked so indexes stay sane)
_MAX_AUDIT_LEAVES = 1 << 56


# Never written to: picklable empty defaults (a mappingproxy is not picklable).
_NO_COUNTS: Mapping[str, int] = {}
#: EntryKeys' default ``loose``: never written to (the auditor replaces it before adding one)
_NO_LOOSE: dict[int, tuple[bytes, str]] = {}


@cache
def _id_struct(count: int) -> struct.Struct:
    """Splits the concatenation of ``count`` 16-byte ids into them, in one call."""
    return struct.Struct("16s" * count)


class EntryKeys(NamedTuple):
    """The hash key (_hash_key) and author of each entry of one bundle, by offset in it.

    Most of a bundle's entries are one shape's (see EntryShapes): their keys are ``run_prefix``
    and a ``run_size``-byte piece of ``run_values``, in the order of ``run_offsets``, and their
    author is ``run_author``. The others are in ``loose``. Kept as whole buffers rather than an
    object per entry, because the auditor keeps one per bundle of the log.
    """

    run_offsets: bytes = b""  # one byte per entry
    run_values: bytes = b""
    run_size: int = 0
    run_prefix: bytes = b""
    run_author: str = ""
    loose: dict[int, tuple[bytes, str]] = _NO_LOOSE

    def key_of(self, offset: int) -> tuple[bytes, str]:
        """(hash key, author) of the entry at ``offset`` (KeyError if none is there)."""
        found = self.loose.get(offset)
        if found is not None:
            return found
        rank = self.run_offsets.find(bytes((offset,)))
        if rank < 0:
            raise KeyError(offset)
        size = self.run_size
        return self.run_prefix + self.run_values[rank * size : rank * size + size], self.run_author


class ScannedBundle(NamedTuple):
    """One entry bundle's leaves, checked and condensed by :func:`scan_bundle` (picklable).

    What :meth:`LogAuditor.add_scanned` needs to apply a whole bundle with a few C-level dict
    and set operations instead of per-leaf Python: the point of scanning in worker processes is
    that the process applying the log's rules in order must not become the bottleneck.
    """

    #: index of the bundle's first leaf (a multiple of 256)
    first: int
    #: the leaf hashes, concatenated (the bundle's level-0 hash tile)
    leaf_hashes: bytes
    #: MTH of the leaves when the bundle is full (the next tile level's entry), else None
    subtree: bytes | None = None
    #: the ids of the bundle's entries (16 bytes each), concatenated, and each one's offset in
    #: the bundle (one byte each), in the same order
    entry_ids: bytes = b""
    entry_offsets: bytes = b""
    #: their hash keys and authors
    keys: EntryKeys = EntryKeys()
    #: (offset in the bundle, author, details as in record_facts) of each revocation, in order
    revocations: tuple[tuple[int, str, tuple[Any, ...]], ...] = ()
    record_types: Mapping[str, int] = _NO_COUNTS
    authors: Mapping[str, int] = _NO_COUNTS
    hash_types: Mapping[str, int] = _NO_COUNTS
    labels: Mapping[str, int] = _NO_COUNTS
    reasons: Mapping[str, int] = _NO_COUNTS
    #: set when the bundle must go through the per-leaf path (an invalid record, an id used twice
    #: in the bundle, a revocation of a later or already revoked entry of the bundle): its facts,
    #: so that the exact per-leaf error is raised without scanning again
    slow: DecodedBundle | None = None


#: the entry shapes scan_bundle has seen in this process: shapes learned in one bundle serve the
#: next. A cache only: it changes how fast a bundle is scanned, never the result.
_SHAPES = EntryShapes()
#: SHA-256 after RFC 9162's leaf prefix (0x00), copied for each leaf hash in scan_bundle
_LEAF_CONTEXT = hashlib.sha256(b"\x00")


def _find_id(ids: bytes | bytearray, rid: bytes) -> int:
    """The rank of ``rid`` among the 16-byte ids concatenated in ``ids``, or -1."""
    at = ids.find(rid)
    while at >= 0 and at % 16:
        at = ids.find(rid, at + 1)
    return at // 16 if at >= 0 else -1


def _slow_scan(entries: Sequence[bytes], first: int) -> ScannedBundle:
    facts, hashes, error = decode_bundle(entries)
    return ScannedBundle(first, b"".join(hashes), slow=(facts, hashes, error))


def scan_bundle(entries: Sequence[bytes], first: int) -> ScannedBundle:
    """Check the records of the bundle of leaves ``first``.. and condense them for the auditor.

    A pure function of its input, so it can run in a worker process (see protocol.audit). The
    checks that need only the bundle run here; what needs the log before it (ids, revocation
    targets) runs in :meth:`LogAuditor.add_scanned`, in order. FormatError only for misuse (an
    unaligned ``first``, more than 256 leaves): invalid records are reported through ``slow``.
    """
    if not isinstance(first, int) or first < 0 or first % TILE_WIDTH:
        raise FormatError("a bundle starts at a multiple of 256", field="first")
    if len(entries) > TILE_WIDTH or first + len(entries) > _MAX_AUDIT_LEAVES:
        raise FormatError("a bundle holds at most 256 leaves, below 2**56", field="entries")
    # Most of an audit's time is here. Entries shaped like one already accepted are matched
    # without being decoded (EntryShapes): the bundle's common shape all at once, the rest one by
    # one. Anything unusual starts over on the per-leaf path (_slow_scan), which has the exact
    # errors.
    if set(map(type, entries)) - {bytes}:
        return _slow_scan(entries, first)
    # Each leaf's hash from a copy of a context that has hashed the leaf prefix already: about
    # 0.2 µs less per leaf than hashing b"\x00" + data (no concatenation, no fresh context).
    hashes: list[bytes] = []
    keep, start = hashes.append, _LEAF_CONTEXT.copy
    for data in entries:
        context = start()
        context.update(data)
        keep(context.digest())
    facts_count: Counter[EntryFacts] = Counter()
    other_authors: list[str] = []
    others: list[str] = []
    revocations: list[tuple[int, str, tuple[Any, ...]]] = []
    loose_ids: list[bytes] = []
    loose_offsets: list[int] = []
    loose_keys: dict[int, tuple[bytes, str]] = {}
    keys = EntryKeys()
    run_ids = b""
    rest: Iterable[int] = range(len(entries))
    shaped = _SHAPES.match_many(entries)
    if shaped is not None:
        facts, size, values = shaped.facts, shaped.value_size, shaped.values
        prefix = _raw_key_prefix(facts.hash_type)
        if prefix is None:  # the digest form: each value's key, all of one length
            keys_of = [_hash_key(facts.hash_type, values[i : i + size].hex())
                       for i in range(0, len(values), size)]
            prefix, values, size = b"", b"".join(keys_of), len(keys_of[0])
        keys = EntryKeys(bytes(shaped.positions), values, size, prefix, facts.author)
        run_ids = shaped.ids
        facts_count[facts] += len(shaped.positions)
        rest = sorted(set(rest).difference(shaped.positions))
    for offset in rest:
        data = entries[offset]
        matched = _SHAPES.match(data)
        if matched is None:
            try:
                record = scan_record(data)
            except FormatError:
                return _slow_scan(entries, first)
            if type(record) is EntryView:
                _SHAPES.learn(data, record)
                h = record.hash
                matched = (EntryFacts(record.author, h.type, record.labels), record.id.encode(),
                           h.value.encode())
            else:
                other_authors.append(record.author)
                if type(record) is RevocationView:
                    revocations.append((offset, record.author, _revocation_detail(record)))
                else:
                    others.append(record.type)
                continue
        facts, rid, value = matched
        loose_ids.append(unhexlify(rid))
        loose_offsets.append(offset)
        loose_keys[offset] = (_hash_key(facts.hash_type, value.decode()), facts.author)
        facts_count[facts] += 1
    entry_ids = run_ids + b"".join(loose_ids)
    entry_offsets = keys.run_offsets + bytes(loose_offsets)
    if loose_keys:
        keys = keys._replace(loose=loose_keys)
    # An id used twice in the bundle is left to the auditor, which sees it anyway (and then
    # takes the per-leaf path). Revocations: a target revoked twice, or an entry of the bundle
    # revoked before it, go the per-leaf path from here.
    if revocations:
        targets = [bytes.fromhex(d[1]) for _o, _a, d in revocations]
        if len(set(targets)) != len(targets):
            return _slow_scan(entries, first)
        for target, (offset, _a, _d) in zip(targets, revocations, strict=True):
            rank = _find_id(entry_ids, target)
            if rank >= 0 and entry_offsets[rank] > offset:
                return _slow_scan(entries, first)
    authors = Counter(other_authors)
    hash_types: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    for facts, count in facts_count.items():
        authors[facts.author] += count
        hash_types[facts.hash_type] += count
        for label in facts.labels:
            labels[label] += count
    joined = b"".join(hashes)
    types = Counter(others)
    if entry_offsets:
        types["entry"] = len(entry_offsets)
    if revocations:
        types["revocation"] = len(revocations)
    return ScannedBundle(
        first,
        joined,
        merkle.root_from_concatenated_hashes(joined) if len(hashes) == TILE_WIDTH else None,
        entry_ids,
        entry_offsets,
        keys,
        tuple(revocations),
        dict(types),
        dict(authors),
        dict(hash_types),
        dict(labels),
        dict(Counter(d[6] for _o, _a, d in revocations)),
    )


class LogAuditor:
    """Streams one log's leaves in index order and checks them against a checkpoint at the end.

    Tree state is a :class:`~protocol.merkle.CompactRange`: O(log n). Every leaf is validated with
    :func:`verify_record`, and revocations are checked against the entries before them: a
    revocation must name an earlier entry of this log by id, with that entry's hash, must not
    revoke it twice, and with ``role`` "author" must come from the entry's author.

    Memory: those revocation checks need every entry's id, so the auditor keeps, per entry, its
    16-byte id mapped to its bundle's number (a dict slot and a 49-byte ``bytes`` in CPython; the
    number is one object per bundle), the id again and its offset in its bundle's buffers (17
    bytes), and per bundle its entries' hash keys and authors (EntryKeys: for one shape, one
    buffer of the hash values, 32 bytes per PDQ entry), plus the set of revoked ids. That is about
    150 bytes per entry, estimated from the object sizes, plus about 80 MB per million
    revocations.
    Everything else (counts per type, reason, label, author) is bounded by the number of distinct
    values, not by the log size.
    """

    __slots__ = (
        "_authors",
        "_entries",
        "_hash_types",
        "_ids",
        "_keys",
        "_labels",
        "_origin",
        "_range",
        "_reasons",
        "_revoked",
        "_types",
    )

    def __init__(self, origin: str) -> None:
        if not isinstance(origin, str) or not origin:
            raise FormatError("origin must be a non-empty string", field="origin")
        self._origin = origin
        self._range = merkle.CompactRange()
        #: entry id -> its bundle's number (leaf index >> 8); its offset there is in _ids. Not
        #: the leaf index itself: a bundle's ids then all map to one int object, which takes
        #: about 40% off adding them (no int allocated per entry)
        self._entries: dict[bytes, int] = {}
        #: per bundle number, its entries' ids (16 bytes each, concatenated) and their offsets in
        #: the bundle (one byte each), in the same order
        self._ids: dict[int, tuple[bytearray, bytearray]] = {}
        self._revoked: set[bytes] = set()
        self._types: Counter[str] = Counter()
        self._hash_types: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._labels: Counter[str] = Counter()
        self._authors: Counter[str] = Counter()
        #: per bundle (leaf index >> 8), its entries' hash keys and authors
        self._keys: dict[int, EntryKeys] = {}

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def size(self) -> int:
        """Leaves added so far."""
        return self._range.size

    def add(self, data: bytes) -> None:
        """Add the next leaf. FormatError (field ``index N``) if it is not a canonical record;
        VerificationError (also naming the index) if it breaks the log's revocation rules.

        A leaf that fails is not added, so the auditor stays consistent but the audit has failed.
        """
        self._range.extend((self._check(data, self._range.size),))

    def add_many(self, leaves: Iterable[bytes]) -> list[bytes]:
        """Add leaves in order and return their leaf hashes (for callers that also build tiles).

        If one fails, the leaves before it stay added, as if :meth:`add` had been called on each.
        """
        hashes: list[bytes] = []
        base = self._range.size
        try:
            for data in leaves:
                hashes.append(self._check(data, base + len(hashes)))
        finally:
            # One extend for the batch: the tree fold is cheaper without per-leaf calls.
            self._range.extend(hashes)
        return hashes

    def _check(self, data: bytes, index: int) -> bytes:
        """Validate leaf ``index`` and update the counts; return its leaf hash (tree untouched)."""
        try:
            facts = record_facts(data)
        except FormatError as e:
            raise self._invalid(e, index) from e
        self._apply(facts, index)
        return merkle.leaf_hash(bytes(data))

    def _invalid(self, e: FormatError, index: int) -> FormatError:
        inner = f" ({e.field})" if e.field else ""
        return type(e)(
            f"leaf {index} of {self._origin} is not a valid record: {e.message}{inner}",
            field=f"index {index}",
        )

    def add_decoded(self, decoded: DecodedBundle) -> list[bytes]:
        """Add the leaves of one bundle already decoded by :func:`decode_bundle` (in order).

        The same checks and errors as :meth:`add_many` on the bundle's bytes: the record checks
        ran in :func:`decode_bundle` (perhaps in another process), the log's rules run here.
        """
        facts, hashes, error = decoded
        base = self._range.size
        done = 0
        try:
            for done, f in enumerate(facts):
                self._apply(f, base + done)
            done = len(facts)
        finally:
            self._range.extend(hashes[:done])
        if error is not None:
            kind, message, field_name = error
            cls = RecordTooLargeError if kind == "RecordTooLargeError" else FormatError
            raise self._invalid(cls(message, field=field_name), base + len(facts))
        return hashes

    def add_scanned(
        self, scanned: ScannedBundle, leaves: Callable[[], Sequence[bytes]]
    ) -> tuple[bytes, bytes | None]:
        """Add the leaves of one bundle scanned by :func:`scan_bundle`, which must start at the
        auditor's size; return the leaf hashes used (concatenated) and their subtree hash if the
        bundle is full and it was computed (else None).

        The same checks and errors as :meth:`add_many` on the bundle's leaves. A bundle that
        passes every check is applied at once; anything else (an invalid record, a duplicate id,
        a revocation that fails or needs order within the bundle) goes through the per-leaf path
        from the state before the bundle, with the facts from ``scanned`` or, if the failure
        depends on earlier leaves, from scanning ``leaves()`` again, so the error is exactly
        the per-leaf one.
        """
        if scanned.first != self._range.size:
            raise FormatError(
                f"bundle starts at leaf {scanned.first}, but {self._range.size} leaves were added",
                field="first",
            )
        if scanned.slow is None and self._add_fast(scanned):
            return scanned.leaf_hashes, scanned.subtree
        decoded = scanned.slow if scanned.slow is not None else decode_bundle(leaves())
        return b"".join(self.add_decoded(decoded)), None

    def _add_fast(self, s: ScannedBundle) -> bool:
        """Apply a clean bundle if every log-level check passes; False (nothing changed) if not."""
        entries = self._entries
        first, ids, offsets = s.first, s.entry_ids, s.entry_offsets
        n = len(offsets)
        revoked: list[bytes] = []
        for _offset, author, detail in s.revocations:
            target, ref_key, role = detail[1], detail[4], detail[5]
            tid = bytes.fromhex(target)
            index = self._index_of(tid)
            if index is None:
                # An entry of this bundle is earlier than the revocation: scan_bundle checked it.
                rank = _find_id(ids, tid)
                index = None if rank < 0 else first + offsets[rank]
            if index is None or tid in self._revoked:
                return False
            key, entry_author = self._key_of(index, s)
            if key != ref_key or (role == "author" and entry_author != author):
                return False
            revoked.append(tid)
        # One pass over the (large) dict: setdefault adds the new ids and keeps any earlier
        # entry; then the size tells whether an id was used before or twice in the bundle (rare:
        # the audit fails), and the ones added are taken out again.
        bundle = first >> 8
        before = len(entries)
        new_ids = _id_struct(n).unpack(ids)
        deque(map(entries.setdefault, new_ids, itertools.repeat(bundle)), maxlen=0)
        if len(entries) != before + n:
            # The bundle starts at the auditor's size, so no earlier id maps to its number.
            for rid in new_ids:
                if entries.get(rid) == bundle:
                    del entries[rid]
            return False
        if n:
            self._keys[bundle] = s.keys
            self._ids[bundle] = (bytearray(ids), bytearray(offsets))  # may grow (_add_entry)
        self._revoked.update(revoked)
        self._types.update(s.record_types)
        self._authors.update(s.authors)
        self._hash_types.update(s.hash_types)
        self._labels.update(s.labels)
        self._reasons.update(s.reasons)
        hashes = s.leaf_hashes
        if s.subtree is not None and len(hashes) == TILE_WIDTH * merkle.HASH_SIZE:
            self._range.append_subtree(8, s.subtree)
        else:
            self._range.extend([hashes[i : i + 32] for i in range(0, len(hashes), 32)])
        return True

    def _index_of(self, rid: bytes) -> int | None:
        """The leaf index of the entry with id ``rid``, if one was added."""
        bundle = self._entries.get(rid)
        if bundle is None:
            return None
        ids, offsets = self._ids[bundle]
        rank = _find_id(ids, rid)
        if rank < 0:  # the two are always written together: a bug, not bad data
            raise AssertionError(f"entry id {rid.hex()} is indexed but not in bundle {bundle}")
        return (bundle << 8) + offsets[rank]

    def _key_of(self, index: int, pending: ScannedBundle | None = None) -> tuple[bytes, str]:
        """(hash key, author) of the entry at leaf ``index``."""
        bundle = index >> 8
        if pending is not None and bundle == pending.first >> 8:
            return pending.keys.key_of(index & 0xFF)
        return self._keys[bundle].key_of(index & 0xFF)

    def _apply(self, facts: RecordFacts, index: int) -> None:
        rtype, author, detail = facts
        if rtype == "entry":
            self._add_entry(author, detail, index)
        elif rtype == "revocation":
            self._add_revocation(author, detail, index)
        self._types[rtype] += 1
        self._authors[author] += 1

    def _add_entry(self, author: str, detail: tuple[Any, ...], index: int) -> None:
        entry_id, hash_type, key, labels = detail
        rid = bytes.fromhex(entry_id)
        if rid in self._entries:
            raise VerificationError(
                f"leaf {index} of {self._origin}: entry id {entry_id} was already used by an "
                "earlier entry",
                field=f"index {index}",
            )
        if index >= _MAX_AUDIT_LEAVES:
            raise FormatError("an audit holds at most 2**56 leaves", field=f"index {index}")
        keys = self._keys.get(index >> 8)
        if keys is None or keys.loose is _NO_LOOSE:
            keys = self._keys[index >> 8] = (keys or EntryKeys())._replace(loose={})
        keys.loose[index & 0xFF] = (key, author)
        ids, offsets = self._ids.setdefault(index >> 8, (bytearray(), bytearray()))
        ids += rid
        offsets.append(index & 0xFF)
        self._entries[rid] = index >> 8
        self._hash_types[hash_type] += 1
        self._labels.update(labels)

    def _add_revocation(self, author: str, detail: tuple[Any, ...], index: int) -> None:
        rev_id, target, ref_type, ref_value16, ref_key, role, reason = detail
        where = f"index {index}"
        prefix = f"leaf {index} of {self._origin}: revocation {rev_id}"
        tid = bytes.fromhex(target)
        entry_index = self._index_of(tid)
        if entry_index is None:
            raise VerificationError(
                f"{prefix} targets {target}, which is not an earlier entry of this log",
                field=where,
            )
        if tid in self._revoked:
            raise VerificationError(
                f"{prefix} targets entry {target}, which is already revoked", field=where
            )
        key, entry_author = self._key_of(entry_index)
        if key != ref_key:
            raise VerificationError(
                f"{prefix} names hash {ref_type}:{ref_value16}..., which is not the hash of "
                f"entry {target}",
                field=where,
            )
        # Only the entry's author may revoke in the "author" role; a coordinator may revoke any.
        if role == "author" and entry_author != author:
            raise VerificationError(
                f"{prefix} is in the author role, but {author} is not the author of entry "
                f"{target}",
                field=where,
            )
        self._revoked.add(tid)
        self._reasons[reason] += 1

    def summary(self) -> AuditSummary:
        """The counts so far, with the root of the leaves added so far (nothing is checked)."""
        return AuditSummary(
            origin=self._origin,
            size=self._range.size,
            root_hash=self._range.root(),
            record_types=_frozen_counts(self._types),
            hash_types=_frozen_counts(self._hash_types),
            revocation_reasons=_frozen_counts(self._reasons),
            labels=_frozen_counts(self._labels),
            authors=_frozen_counts(self._authors),
            entries=len(self._entries),
            revoked=len(self._revoked),
        )

    def finish(self, cp: Checkpoint) -> AuditSummary:
        """Compare the leaves added so far with ``cp``; return the summary if they match.

        ProofError if the checkpoint is for another origin, has another size (a truncated or
        over-long log) or another root. Does not change the auditor: more leaves may follow and
        ``finish`` may be called again with a later checkpoint.
        """
        size = self._range.size
        if cp.origin != self._origin:
            raise ProofError(
                f"checkpoint is for {cp.origin!r}, but the leaves are from {self._origin!r}"
            )
        if cp.size > size:
            raise ProofError(
                f"{self._origin}: checkpoint has {cp.size} leaves but only {size} were given "
                f"(the log is truncated after leaf {size - 1})"
                if size
                else f"{self._origin}: checkpoint has {cp.size} leaves but none were given"
            )
        if cp.size < size:
            raise ProofError(
                f"{self._origin}: {size} leaves were given but the checkpoint covers only "
                f"{cp.size}"
            )
        summary = self.summary()
        if summary.root_hash != cp.root_hash:
            raise ProofError(
                f"{self._origin}: the root of the {size} leaves ({summary.root_hash.hex()}) is not "
                f"the checkpoint's root ({cp.root_hash.hex()})"
            )
        return summary


def verify_log(leaves: Iterable[bytes], cp: Checkpoint) -> AuditSummary:
    """Audit a whole log given as its leaves in index order, against a verified checkpoint."""
    auditor = LogAuditor(cp.origin)
    for data in leaves:
        auditor.add(data)
    return auditor.finish(cp)

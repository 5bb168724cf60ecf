"""Fast, exact record validation for hot paths (sync, audit, publish): frozen msgspec views.

:func:`scan_record` accepts exactly the byte strings :func:`protocol.records.decode_record`
accepts and raises exactly the same errors, at a fraction of the cost (about 5 µs instead of
about 28 µs for a typical entry). It returns a frozen, read-only *view* whose field names are
those of the pydantic record models (``rec.id``, ``rec.hash.type``, ``rec.provenance.chain``...),
so code that only reads a record works on either; :func:`view_to_record` gives the pydantic model
when one is needed.

How the fast path stays exact:

* the views are msgspec structs without constraints; after decoding, every grammar and
  cross-field rule of :mod:`protocol.records` and :mod:`protocol.hashtypes` is checked here in
  plain Python, each check equal to or *stricter* than the model's (e.g. a URL is taken here only
  when it is printable ASCII);
* canonical form is ``msgspec.json.encode(view) == data``: the views declare their fields in
  RFC 8785 order (all keys are ASCII) and omit only absent optional fields. msgspec writes every
  string exactly as RFC 8785 does (tests/test_scan.py compares every code point), and a value
  that re-encodes to the very bytes received has no whitespace, duplicate key, ``null`` field,
  escape, float, ``-0`` or other alternative spelling;
* on *any* failure the bytes go to ``decode_record``, which raises the reference error (same
  class, message and field). Should it accept what the fast path refused, its record is returned
  as a view, so the fast path can only make acceptance faster, never narrower; that it is never
  wider is what the property tests prove.
"""

from __future__ import annotations

import itertools
import re
from binascii import unhexlify
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, TypeAlias

import msgspec
from msgspec import Meta

from protocol import hashtypes
from protocol.errors import FormatError
from protocol.grammar import (
    _PRINTABLE_RE,
    MAX_RECORD_SIZE,
    MemberRole,
    RevocationReason,
    _check_label,
    _check_timestamp,
)
from protocol.hashtypes import HASH_TYPES, check_hash

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from protocol.records import Attestation, Entry, Membership, Revocation

# protocol.records (pydantic) is imported only where a record model is needed: the reference
# decoder when the fast path refuses, and view_to_record. A clean log never needs it, and it
# costs about 0.2 s to import.

__all__ = [
    "AttestationView",
    "EntryFacts",
    "EntryShapes",
    "EntryView",
    "HashRefView",
    "HashValueView",
    "HopView",
    "MembershipView",
    "ProvenanceView",
    "RecordView",
    "RevocationView",
    "ShapedRun",
    "VettingView",
    "scan_record",
    "view_to_record",
]


class _View(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,  # lets required and optional fields interleave in RFC 8785 key order
    omit_defaults=True,  # absent optional fields are omitted, as encode_record does
    gc=False,  # views hold only str, int and views: no cycles, so the collector can skip them
):
    """Base of the views. Fields are declared in sorted key order: msgspec writes them so.

    Subclasses repeat ``frozen`` and ``kw_only`` (msgspec inherits them anyway) because type
    checkers do not carry dataclass-transform options over to subclasses.
    """


# Length and range bounds are the models' own and cost msgspec almost nothing; patterns are left
# out on purpose (each one is a Python regex call inside msgspec) and checked below instead.
_Hex128: TypeAlias = Annotated[str, Meta(min_length=32, max_length=32)]
_ShortText: TypeAlias = Annotated[str, Meta(min_length=1, max_length=64)]
_RefText: TypeAlias = Annotated[str, Meta(min_length=1, max_length=256)]
_Text: TypeAlias = Annotated[str, Meta(min_length=1, max_length=1024)]

# ---------------------------------------------------------------------------------------------
# Parts of records
# ---------------------------------------------------------------------------------------------


class HashValueView(_View, frozen=True, kw_only=True):
    """A record's hash: like :class:`protocol.records.HashValue`."""

    quality: int | None = None
    type: str
    value: str


class HashRefView(_View, frozen=True, kw_only=True):
    """(type, value) of a hash: like :class:`protocol.records.HashRef`."""

    type: str
    value: str


class VettingView(_View, frozen=True, kw_only=True):
    """Like :class:`protocol.records.Vetting`."""

    at: str | None = None
    reviews: Annotated[int, Meta(ge=0, le=1000)]
    standard: _ShortText | None = None
    status: Literal["confirmed", "unconfirmed"]


class HopView(_View, frozen=True, kw_only=True):
    """Like :class:`protocol.records.Hop`."""

    at: str
    org: str
    origin: str
    record: _Hex128


class ProvenanceView(_View, frozen=True, kw_only=True):
    """Like :class:`protocol.records.Provenance`."""

    chain: Annotated[tuple[HopView, ...], Meta(max_length=16)]
    first_seen: str
    node: str
    org: str
    record: _Hex128
    source_ref: _RefText | None = None


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


class EntryView(_View, frozen=True, kw_only=True):
    """A validated entry, read-only: like :class:`protocol.records.Entry`."""

    author: str
    created: str
    expires: str | None = None
    generated: Literal["generated", "not_generated", "unknown"]
    hash: HashValueView
    id: _Hex128
    labels: Annotated[tuple[str, ...], Meta(max_length=32)]
    media: Literal["image", "video"]
    nonce: _Hex128
    provenance: ProvenanceView
    type: Literal["entry"]
    v: Literal[1]
    vetting: VettingView

    def hash_ref(self) -> HashRefView:
        return HashRefView(type=self.hash.type, value=self.hash.value)


class RevocationView(_View, frozen=True, kw_only=True):
    """A validated revocation, read-only: like :class:`protocol.records.Revocation`."""

    author: str
    created: str
    id: _Hex128
    nonce: _Hex128
    reason: RevocationReason
    role: Literal["author", "coordinator"]
    target: _Hex128
    target_hash: HashRefView
    text: _Text | None = None
    type: Literal["revocation"]
    v: Literal[1]


class AttestationView(_View, frozen=True, kw_only=True):
    """A validated attestation, read-only: like :class:`protocol.records.Attestation`."""

    author: str
    count: Annotated[int, Meta(ge=1, le=2**53 - 1)] | None = None
    created: str
    id: _Hex128
    nonce: _Hex128
    opinion: Literal["agree", "disagree", "also_vetted", "sighting"]
    reason: _Text | None = None
    target: _Hex128
    target_hash: HashRefView
    target_origin: str
    type: Literal["attestation"]
    v: Literal[1]


class MembershipView(_View, frozen=True, kw_only=True):
    """A validated membership record, read-only: like :class:`protocol.records.Membership`."""

    action: Literal["admit", "rotate", "suspend", "remove"]
    author: str
    created: str
    id: _Hex128
    member: str
    name: _Text | None = None
    node_url: str | None = None
    nonce: _Hex128
    reason: _Text | None = None
    roles: Annotated[tuple[MemberRole, ...], Meta(max_length=5)]
    type: Literal["membership"]
    v: Literal[1]
    valid_from: str | None = None
    valid_until: str | None = None
    vkeys: Annotated[tuple[str, ...], Meta(max_length=8)]


RecordView: TypeAlias = EntryView | RevocationView | AttestationView | MembershipView

# ---------------------------------------------------------------------------------------------
# Field grammars: each accepts a subset of what the pydantic field accepts
# ---------------------------------------------------------------------------------------------

_ORG_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_ORG_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789._-"
# The records.Origin pattern; every class in it is explicit ASCII, so Python's re and the Rust
# engine pydantic uses agree on it.
_ORIGIN_RE = re.compile(r"[a-z0-9][a-z0-9.:-]{0,127}(/[a-zA-Z0-9._~-]{1,64}){0,8}")
# records.Url and records.VKey use \s, whose Unicode meaning could differ between the engines:
# here only printable ASCII (no space) is taken, and anything else goes to the reference.
_URL_RE = re.compile(r"https?://[!-~]{1,250}")
_VKEY_RE = re.compile(r"[!-*,-~]{1,128}\+[0-9a-f]{8}\+[A-Za-z0-9+/]{4,200}={0,2}")


def _plain_hex_lengths() -> dict[str, int]:
    """Hash types whose whole grammar is "exactly n lowercase hex characters", with n.

    Recognised by their checker being a closure of ``hashtypes._hex_checker`` (n read from the
    closure), so a type registered any other way keeps its own checker. Their values are checked
    together with the record ids in one pass (see ``_all_hex``).
    """
    hex_code = hashtypes._hex_checker("probe", 1).__code__
    lengths = {}
    for name, ht in HASH_TYPES.items():
        check: Any = ht.check
        if getattr(check, "__code__", None) is hex_code and check.__closure__:
            cells = dict(zip(hex_code.co_freevars, check.__closure__, strict=True))
            lengths[name] = cells["n_chars"].cell_contents
    return lengths


_PLAIN_HEX = _plain_hex_lengths()

# Timestamps, organisations, origins and labels repeat across a log: each distinct value is
# checked once. A cache is emptied when full, so memory stays bounded whatever the input.
_CACHE_LIMIT = 4096
_good_times: set[str] = set()
_good_orgs: set[str] = set()
_good_origins: set[str] = set()
_good_labels: set[str] = set()
#: everything an entry is checked on except its own ids, hash value, source_ref and chain: a
#: publisher's entries share all of it, so most entries are checked with one set lookup
_good_entry_parts: set[tuple[Any, ...]] = set()


def _remember(cache: set[Any], value: Any) -> bool:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache.add(value)
    return True


def _all_hex(value: str) -> bool:
    """Lowercase hex only (the lengths are the views' Meta bounds or checked by the caller)."""
    try:
        # fromhex refuses non-hex and non-ASCII; upper case or spaces do not survive the trip.
        return bytes.fromhex(value).hex() == value
    except ValueError:
        return False


def _time(value: str | None) -> bool:
    if value is None or value in _good_times:
        return True
    try:
        _check_timestamp(value)
    except ValueError:
        return False
    return _remember(_good_times, value)


def _org(value: str) -> bool:
    if value in _good_orgs:
        return True
    # Length 1..64, first character, then the rest: records.OrgId.
    if 0 < len(value) <= 64 and value[0] in _ORG_FIRST and not value.strip(_ORG_CHARS):
        return _remember(_good_orgs, value)
    return False


def _origin(value: str) -> bool:
    if value in _good_origins:
        return True
    if _ORIGIN_RE.fullmatch(value) is not None:
        return _remember(_good_origins, value)
    return False


def _label(value: str) -> bool:
    if value in _good_labels:
        return True
    try:
        _check_label(value)
    except ValueError:
        return False
    return _remember(_good_labels, value)


def _text(value: str | None) -> bool:
    """records' printable-text rule (the length bounds are the views' Meta)."""
    # isprintable() refuses a superset of what records refuses (all of Cc, Zl, Zp and more), so
    # when it says yes the regex would too; when it says no, the regex decides.
    return value is None or value.isprintable() or _PRINTABLE_RE.fullmatch(value) is not None


def _hash_ref(ref: HashRefView) -> bool:
    # The checks of records.HashRef: a registered type, its length bound, its value grammar.
    ht = HASH_TYPES.get(ref.type)
    if ht is None or (ht.max_length and len(ref.value) > ht.max_length):
        return False
    try:
        ht.check(ref.value)
    except FormatError:
        return False
    return True


def _common(r: RecordView) -> bool:
    return _all_hex(r.id + r.nonce) and _org(r.author) and _time(r.created)


def _entry_parts_ok(e: EntryView) -> bool:
    """The checks behind ``_good_entry_parts`` (its key lists exactly what they read)."""
    h, vet, p = e.hash, e.vetting, e.provenance
    ht = HASH_TYPES.get(h.type)
    if ht is None or e.media not in ht.media:
        return False
    if ht.has_quality:
        if h.quality is None or not 0 <= h.quality <= 100:
            return False
    elif h.quality is not None:
        return False
    labels = e.labels
    if len(set(labels)) != len(labels) or not all(_label(label) for label in labels):
        return False
    return (
        (vet.status != "confirmed" or vet.reviews >= 1)
        and _text(vet.standard)
        and _time(vet.at)
        and _org(e.author)
        and _time(e.created)
        and _time(e.expires)
        and _org(p.org)
        and _origin(p.node)
        and _time(p.first_seen)
    )


def _entry_ok(e: EntryView) -> bool:
    h, vet, p = e.hash, e.vetting, e.provenance
    parts = (
        e.author, e.created, e.expires, e.media, e.labels, h.type, h.quality,
        vet.status, vet.reviews, vet.standard, vet.at, p.org, p.node, p.first_seen,
    )
    if parts not in _good_entry_parts:
        if not _entry_parts_ok(e):
            return False
        _remember(_good_entry_parts, parts)
    ids = e.id + e.nonce + p.record
    n = _PLAIN_HEX.get(h.type)
    if n is not None:
        if len(h.value) != n:
            return False
        ids += h.value
    else:
        try:
            check_hash(h.type, h.value, h.quality)
        except FormatError:
            return False
    for hop in p.chain:
        ids += hop.record
        if not (_org(hop.org) and _origin(hop.origin) and _time(hop.at)):
            return False
    return _all_hex(ids) and _text(p.source_ref)


def _revocation_ok(r: RevocationView) -> bool:
    return (
        _common(r)
        and _all_hex(r.target)
        and _hash_ref(r.target_hash)
        and _text(r.text)
        and (r.reason != "other" or r.text is not None)
    )


def _attestation_ok(a: AttestationView) -> bool:
    return (
        _common(a)
        and _all_hex(a.target)
        and _origin(a.target_origin)
        and _hash_ref(a.target_hash)
        and _text(a.reason)
        and (a.opinion != "disagree" or a.reason is not None)
        and ((a.opinion == "sighting") == (a.count is not None))
    )


def _membership_ok(m: MembershipView) -> bool:
    if not (
        _common(m)
        and _org(m.member)
        and _text(m.name)
        and _text(m.reason)
        and (m.node_url is None or _URL_RE.fullmatch(m.node_url) is not None)
        and all(_VKEY_RE.fullmatch(k) is not None for k in m.vkeys)
        and len(set(m.roles)) == len(m.roles)
        and _time(m.valid_from)
        and _time(m.valid_until)
    ):
        return False
    if m.action == "admit" and (
        m.name is None or m.node_url is None or m.valid_from is None or not m.vkeys or not m.roles
    ):
        return False
    if m.action == "rotate" and not m.vkeys:
        return False
    # The model compares the strings too: same-format UTC timestamps sort like the times.
    return m.valid_from is None or m.valid_until is None or m.valid_until > m.valid_from


# ---------------------------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------------------------

#: a view type's decoder and the checks of its record model
_Kind: TypeAlias = tuple[Callable[[bytes], RecordView], Callable[[Any], bool]]

_ENTRY: _Kind = (msgspec.json.Decoder(EntryView).decode, _entry_ok)
#: the first three bytes of the value after the last '"type":"' pick the decoder to try; the
#: record's own Literal ``type`` field decides, so a misleading peek only costs the fast path
_KINDS: dict[bytes, _Kind] = {
    b"ent": _ENTRY,
    b"rev": (msgspec.json.Decoder(RevocationView).decode, _revocation_ok),
    b"att": (msgspec.json.Decoder(AttestationView).decode, _attestation_ok),
    b"mem": (msgspec.json.Decoder(MembershipView).decode, _membership_ok),
}
_VIEW_OF: dict[str, type[RecordView]] = {
    "entry": EntryView,
    "revocation": RevocationView,
    "attestation": AttestationView,
    "membership": MembershipView,
}
_encode = msgspec.json.Encoder().encode


def _fast_scan(data: bytes) -> RecordView | None:
    """The view if ``data`` passes every check of the fast path; None for anything else."""
    if len(data) > MAX_RECORD_SIZE:
        return None
    at = data.rfind(b'"type":"') + 8
    decoder, check = _KINDS.get(data[at : at + 3], _ENTRY)
    try:
        view = decoder(data)
        ok = check(view) and _encode(view) == data
    except Exception:  # any failure at all (even UnicodeDecodeError): the reference decides
        return None
    return view if ok else None


def scan_record(data: bytes) -> RecordView:
    """Validate one record's bytes exactly as :func:`~protocol.records.decode_record` does.

    Returns a frozen view of the record. Raises what ``decode_record`` raises for the same bytes:
    :class:`~protocol.errors.FormatError` (:class:`~protocol.errors.RecordTooLargeError` over
    the size limit) with the same message and field.
    """
    view = _fast_scan(data)
    if view is not None:
        return view
    from protocol.records import decode_record

    record = decode_record(data)  # raises the reference error
    # Accepted by the reference but not the fast path (e.g. a non-ASCII node URL): same result,
    # only slower.
    return msgspec.convert(
        record.model_dump(mode="json", exclude_none=True), type=_VIEW_OF[record.type]
    )


def view_to_record(view: RecordView) -> Entry | Revocation | Attestation | Membership:
    """The pydantic model of a view, for callers that need one (validated again: not hot)."""
    from protocol.records import decode_record

    return decode_record(_encode(view))


# ---------------------------------------------------------------------------------------------
# Entry shapes: a log's entries mostly differ only in their ids, hash values and times
# ---------------------------------------------------------------------------------------------


class EntryFacts(NamedTuple):
    """What every entry of one :class:`EntryShapes` shape has in common, as the view has it."""

    author: str
    hash_type: str
    labels: tuple[str, ...]


class ShapedRun(NamedTuple):
    """Entries of one bundle that :meth:`EntryShapes.match_many` matched to one shape."""

    facts: EntryFacts
    #: where each matched entry is in the sequence given
    positions: Sequence[int]
    #: their ids (16 bytes each) and hash values (``value_size`` bytes each), in the same order,
    #: concatenated
    ids: bytes
    values: bytes
    value_size: int


#: keys whose every occurrence in an entry is a Hex128 field: top-level id and nonce, the
#: provenance's and each hop's record
_HEX128_KEYS = (b'"id":"', b'"nonce":"', b'"record":"')
#: keys whose every occurrence in an entry is a Timestamp: created, expires, provenance.first_seen,
#: vetting.at and each hop's at
_TIME_KEYS = (b'"created":"', b'"expires":"', b'"first_seen":"', b'"at":"')
_TIME_LENGTH = 20  # 2026-11-26T18:53:27Z: the only length records._TIMESTAMP_RE matches
#: records._TIMESTAMP_RE (ASCII digits) with the hour, minute and second ranges datetime checks
_TIME_BYTES_RE = re.compile(
    rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z"
)
_LOWER_HEX = b"0123456789abcdef"
#: two-digit qualities, as canonical JSON writes them (no leading zero), all within 0..100
_QUALITY_2 = frozenset(b"%d" % q for q in range(10, 100))
_HEX, _TIME, _QUALITY = 0, 1, 2  # kinds of cut-out field
_RUN_LENGTH = 256  # entries per bundle: the most match_many prepares for
_RUN_SHAPES = 16  # shapes with match_many's tables at once (~145 KB each)
_PER_LENGTH = 4  # shapes kept per entry length (each one tried costs about a microsecond)
_MAX_FAILS = 64  # entries in a row that match no shape before EntryShapes rests ...
_SKIP = 1024  # ... for this many entries


@cache
def _numpy() -> ModuleType:
    """numpy, imported when match_many first needs it: 0.1 s that only large runs pay back."""
    import numpy

    return numpy


class _RunTables(NamedTuple):
    """What match_many needs to check _RUN_LENGTH entries of one shape, joined end to end.

    The joined entries are read as a matrix with one entry per row (numpy, without a copy), so
    that each check is a few C-level operations over the whole bundle instead of one per entry:
    a field's column block (``rows[:, field]``) is every entry's value of that field.
    """

    #: 0xFF for each byte outside the cut-out fields, 0 inside them
    mask: NDArray[np.uint8]
    #: _RUN_LENGTH copies of the shape's bytes with ``mask`` applied
    expected: bytes
    #: the hex fields other than the id and the hash value (which are read out on their own)
    hex: tuple[slice, ...]


class _Shape:
    """An accepted entry with its variable fields cut out (see EntryShapes)."""

    __slots__ = (
        "cuts", "facts", "hex_slices", "id", "length", "offsets", "quality", "run", "segments",
        "template", "time_slices", "value",
    )

    def __init__(self, data: bytes, facts: EntryFacts, cuts: list[tuple[int, int, int]],
                 id_at: int, value: slice) -> None:
        self.facts = facts
        self.template = data
        self.length = len(data)
        self.cuts = cuts
        #: the bytes outside the cut-out fields, and where each starts
        segments, offsets, at = [], [], 0
        for start, end, _kind in cuts:
            segments.append(data[at:start])
            offsets.append(at)
            at = end
        segments.append(data[at:])
        offsets.append(at)
        self.segments = tuple(segments)
        self.offsets = tuple(offsets)
        self.hex_slices = tuple(slice(s, e) for s, e, kind in cuts if kind == _HEX)
        self.time_slices = tuple(slice(s, e) for s, e, kind in cuts if kind == _TIME)
        quality = [slice(s, e) for s, e, kind in cuts if kind == _QUALITY]
        self.quality = quality[0] if quality else None
        self.id = slice(id_at, id_at + 32)
        self.value = value
        #: match_many's tables, built when first needed
        self.run: _RunTables | None = None

    def run_tables(self) -> _RunTables:
        if self.run is None:
            np = _numpy()
            mask = np.full(self.length, 0xFF, np.uint8)
            for start, end, _kind in self.cuts:
                mask[start:end] = 0
            template = np.frombuffer(self.template, np.uint8) & mask
            special = (self.id.start, self.value.start)
            self.run = _RunTables(
                mask,
                template.tobytes() * _RUN_LENGTH,
                tuple(s for s in self.hex_slices if s.start not in special),
            )
        return self.run


def _occurrences(data: bytes, key: bytes) -> list[int]:
    """Where each ``key`` (a quoted key, a colon and the value's opening quote) ends in data."""
    found = []
    at = data.find(key)
    while at >= 0:
        found.append(at + len(key))
        at = data.find(key, at + 1)
    return found


class EntryShapes:
    """Recognises entries that equal an entry already accepted except in their variable fields.

    A log's entries from one publisher mostly differ only in their ids, nonces, provenance
    records, hash values, timestamps and qualities. A *shape* is the bytes of an entry that
    :func:`scan_record` accepted, with those fields cut out. :meth:`match` accepts bytes of the
    same length that equal a shape everywhere outside those fields and have, in each, a value of
    the field's grammar, with a few C-level comparisons instead of decoding, validating and
    encoding the record again; :meth:`match_many` does the same for a whole bundle's entries at
    once (about 0.3-0.8 µs per entry, against 8-12 µs for scan_record on a cold leaf). Both return
    None for anything else: the caller scans the record and :meth:`learn` s its shape. One
    instance per process; not thread-safe (it reorders and replaces its shapes as it goes).

    Why a match is exact, i.e. is a record :func:`~protocol.records.decode_record` accepts:

    * the bytes outside the fields are the accepted record's, and each field's value has the
      same length and only characters that JSON writes as themselves (lowercase hex; digits,
      ``-``, ``:``, ``T`` and ``Z``), so the match parses to the same keys and the same values
      except those fields, and is canonical (RFC 8785) exactly when the accepted record is;
    * each field's new value is valid wherever it stands: ids, nonces and records take any 32
      lowercase hex characters, a plain-hex hash type any n of them (see ``_PLAIN_HEX``), a
      timestamp any real time of the one length records accepts (checked by ``_times_ok``), a
      two-digit quality anything from 10 to 99;
    * no rule of an entry ties one of these fields to another field (the model's cross-field
      rules read media, hash type, quality, labels and vetting only);
    * a key is found by its quoted name followed by ``:"``: in canonical JSON a quote inside a
      string is escaped, so that sequence only occurs where that key starts, and every key cut
      out here names fields of one grammar wherever it occurs in an entry (``_HEX128_KEYS``,
      ``_TIME_KEYS``). The count of each is checked against the view before a shape is kept.

    tests/test_scan.py mutates matched records at random to check that a match is never wider
    than the reference. Memory is bounded: at most ``limit`` shapes, emptied when full.
    """

    __slots__ = ("_by_length", "_count", "_days", "_fails", "_learned", "_limit", "_matched",
                 "_missed", "_runs", "_skip", "_times")

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._by_length: dict[int, list[_Shape]] = {}
        self._count = 0
        self._runs = 0  # shapes with match_many's tables
        self._times: set[bytes] = set()
        self._days: set[bytes] = set()
        # Trying shapes and learning them cost time that only matches pay back. When they stop
        # paying (every entry its own shape, say a distinct source_ref each): after _MAX_FAILS
        # misses in a row, the next _SKIP entries are neither tried nor learned from; and only
        # one miss in 16 is learned from while learning does not lead to matches.
        self._learned = self._matched = self._missed = self._fails = self._skip = 0

    def match(self, data: bytes) -> tuple[EntryFacts, bytes, bytes] | None:
        """(facts, id, hash value) of an entry of a known shape, as ASCII bytes; else None."""
        if self._skip:
            self._skip -= 1
            return None
        if type(data) is not bytes:  # a bytearray or memoryview: left to scan_record
            return None
        for i, shape in enumerate(self._by_length.get(len(data), ())):
            if all(map(data.startswith, shape.segments, shape.offsets)):
                if i:  # the most recently matched shape is tried first
                    shapes = self._by_length[len(data)]
                    shapes[0], shapes[i] = shape, shapes[0]
                break
        else:
            self._missed += 1
            self._fails += 1
            if self._fails >= _MAX_FAILS:
                self._fails, self._skip = 0, _SKIP
            return None
        self._fails = 0
        part = data.__getitem__
        if b"".join(map(part, shape.hex_slices)).translate(None, _LOWER_HEX):
            return None
        if not self._times_ok(map(part, shape.time_slices)):
            return None
        if shape.quality is not None and part(shape.quality) not in _QUALITY_2:
            return None
        self._matched += 1
        return shape.facts, part(shape.id), part(shape.value)

    def match_many(self, leaves: Sequence[bytes]) -> ShapedRun | None:
        """The leaves of the most common length, if all of them are entries of one known shape.

        At most 256 leaves (a bundle). None if there is no such shape or any of them does not
        match it: the caller then goes leaf by leaf.
        """
        if self._skip or not leaves or len(leaves) > _RUN_LENGTH:
            return None
        lengths = list(map(len, leaves))
        length = lengths[0]
        common = lengths.count(length)
        positions: Sequence[int]
        if common == len(lengths):
            positions, run = range(len(leaves)), leaves
        else:
            if 2 * common <= len(lengths):  # the most common length (the first of equals)
                length = max(dict.fromkeys(lengths), key=lengths.count)
            positions = [i for i, n in enumerate(lengths) if n == length]
            run = list(map(leaves.__getitem__, positions))
        shapes = self._by_length.get(length)
        if not shapes or self.match(run[0]) is None:
            return None
        shape = shapes[0]  # the one run[0] matched
        if shape.run is None:
            if self._runs >= _RUN_SHAPES:  # drop them all: the shapes in use build theirs again
                for kept in self._by_length.values():
                    for other in kept:
                        other.run = None
                self._runs = 0
            self._runs += 1
        tables = shape.run_tables()
        n = len(run)
        # Always _RUN_LENGTH entries, so that what is expected is the same for every run: the
        # padding repeats run[0], which matched on its own above.
        joined = b"".join(itertools.chain(run, itertools.repeat(run[0], _RUN_LENGTH - n)))
        np = _numpy()
        rows = np.frombuffer(joined, np.uint8).reshape(_RUN_LENGTH, length)
        # Every byte outside the fields is the shape's, ...
        if np.bitwise_and(rows, tables.mask).tobytes() != tables.expected:
            return None
        # ... every hex field is lowercase hex (so that .hex() of what unhexlify gives is these
        # very characters; unhexlify fails only on an odd number of them), ...
        ids = rows[:n, shape.id].tobytes()
        values = rows[:n, shape.value].tobytes()
        hex_fields = [ids, values, *[rows[:, c].tobytes() for c in tables.hex]]
        if b"".join(hex_fields).translate(None, _LOWER_HEX):
            return None
        try:
            raw_ids, raw_values = unhexlify(ids), unhexlify(values)
        except ValueError:  # binascii.Error: a hash type of an odd number of hex digits
            return None
        # ... every timestamp a real time (often one for the whole run), ...
        for c in shape.time_slices:
            column = rows[:, c].tobytes()
            first = column[:_TIME_LENGTH]
            times: Iterable[bytes] = (
                (first,) if column == first * _RUN_LENGTH
                else {column[i : i + _TIME_LENGTH] for i in range(0, len(column), _TIME_LENGTH)}
            )
            if not self._times_ok(times):
                return None
        # ... and every two-digit quality from 10 to 99.
        if shape.quality is not None:
            digits = rows[:, shape.quality].tobytes()
            if (digits[0::2].translate(None, b"123456789")
                    or digits[1::2].translate(None, b"0123456789")):
                return None
        self._matched += n - 1  # match counted run[0]
        return ShapedRun(shape.facts, positions, raw_ids, raw_values,
                         (shape.value.stop - shape.value.start) // 2)

    def _times_ok(self, times: Iterable[bytes]) -> bool:
        """Whether every one is a timestamp records accepts (records._check_timestamp)."""
        for t in times:
            if t in self._times:
                continue
            # The pattern takes what records' pattern takes and the clock's ranges; what is left
            # is the date, and a log has few distinct dates.
            if _TIME_BYTES_RE.fullmatch(t) is None:
                return False
            day = t[:10]
            if day not in self._days:
                try:
                    date(int(t[:4]), int(t[5:7]), int(t[8:10]))
                except ValueError:
                    return False
                _remember(self._days, day)
            _remember(self._times, t)
        return True

    def learn(self, data: bytes, view: EntryView) -> None:
        """Keep the shape of ``data``, which :func:`scan_record` accepted as ``view``."""
        if (self._skip or type(data) is not bytes
                or self._learned > 64 + self._matched + self._missed // 16):
            return
        self._learned += 1
        n = _PLAIN_HEX.get(view.hash.type)
        if n is None or len(data) > MAX_RECORD_SIZE:
            return  # other hash types are not cut out: no two entries would share a shape
        hops = len(view.provenance.chain)
        hex_starts = [_occurrences(data, key) for key in _HEX128_KEYS]
        time_starts = [_occurrences(data, key) for key in _TIME_KEYS]
        values = _occurrences(data, b'"value":"')
        qualities = _occurrences(data, b'"quality":')  # the value is a number, not a string
        found = ([len(x) for x in hex_starts], [len(x) for x in time_starts], len(values),
                 len(qualities))
        expected = ([1, 1, 1 + hops],
                    [1, int(view.expires is not None), 1, int(view.vetting.at is not None) + hops],
                    1, int(view.hash.quality is not None))
        if found != expected:
            return  # not the entry this reasoning is about: leave it to scan_record
        cuts = [(s, s + 32, _HEX) for starts in hex_starts for s in starts]
        cuts += [(s, s + _TIME_LENGTH, _TIME) for starts in time_starts for s in starts]
        cuts.append((values[0], values[0] + n, _HEX))
        q = view.hash.quality
        if q is not None and 10 <= q <= 99:
            cuts.append((qualities[0], qualities[0] + 2, _QUALITY))
        cuts.sort()
        shape = _Shape(data, EntryFacts(view.author, view.hash.type, view.labels), cuts,
                       hex_starts[0][0], slice(values[0], values[0] + n))
        if self._count >= self._limit:
            self._by_length.clear()
            self._count = self._runs = 0
        shapes = self._by_length.setdefault(len(data), [])
        shapes.insert(0, shape)
        self._count += 1
        if len(shapes) > _PER_LENGTH:  # many shapes of one length: keep the recent ones
            if shapes.pop().run is not None:
                self._runs -= 1
            self._count -= 1

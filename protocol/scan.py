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

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeAlias

import msgspec
from msgspec import Meta

from protocol import hashtypes
from protocol.errors import FormatError
from protocol.hashtypes import HASH_TYPES, check_hash
from protocol.records import (
    _PRINTABLE_RE,
    MAX_RECORD_SIZE,
    Attestation,
    Entry,
    MemberRole,
    Membership,
    Revocation,
    RevocationReason,
    _check_label,
    _check_timestamp,
    decode_record,
)

__all__ = [
    "AttestationView",
    "EntryView",
    "HashRefView",
    "HashValueView",
    "HopView",
    "MembershipView",
    "ProvenanceView",
    "RecordView",
    "RevocationView",
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
_VIEW_OF: dict[type, type[RecordView]] = {
    Entry: EntryView,
    Revocation: RevocationView,
    Attestation: AttestationView,
    Membership: MembershipView,
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
    record = decode_record(data)  # raises the reference error
    # Accepted by the reference but not the fast path (e.g. a non-ASCII node URL): same result,
    # only slower.
    return msgspec.convert(
        record.model_dump(mode="json", exclude_none=True), type=_VIEW_OF[type(record)]
    )


def view_to_record(view: RecordView) -> Entry | Revocation | Attestation | Membership:
    """The pydantic model of a view, for callers that need one (validated again: not hot)."""
    return decode_record(_encode(view))

"""The records a hashfed log holds, as frozen validated models, and their canonical bytes.

A log leaf is exactly ``encode_record(record)``: the RFC 8785 canonical JSON of the record with
absent optional fields omitted (never ``null``). ``decode_record(data)`` accepts only bytes that are
already in that exact form, so the bytes a node received are the bytes it stores, hashes and
re-serves; nothing is ever re-serialized to be verified.

Every model is frozen and validated when built: an invalid record cannot exist. Sequences are
tuples.
Scalars are strict (no "1" -> 1 coercion). Unknown fields are refused (``extra="forbid"``): a new
field is a new record version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from protocol import hashtypes
from protocol.errors import FormatError, RecordTooLargeError
from protocol.grammar import (
    INDUSTRY_CLASSIFICATION,
    MAX_RECORD_SIZE,
    RECORD_TYPES,
    RECORD_VERSION,
    MemberRole,
    RevocationReason,
    _check_label,
    _check_printable,
    _check_timestamp,
    new_nonce,
    new_record_id,
    parse_timestamp,
    timestamp,
)
from protocol.jcs import canonicalize

__all__ = [
    "INDUSTRY_CLASSIFICATION",
    "MAX_RECORD_SIZE",
    "RECORD_TYPES",
    "RECORD_VERSION",
    "Attestation",
    "Entry",
    "HashRef",
    "HashValue",
    "Hex128",
    "Hop",
    "Label",
    "MemberRole",
    "Membership",
    "OrgId",
    "Origin",
    "Provenance",
    "Record",
    "RefText",
    "Revocation",
    "RevocationReason",
    "ShortText",
    "Text",
    "Timestamp",
    "Url",
    "VKey",
    "Vetting",
    "decode_record",
    "encode_record",
    "entry_from_dict",
    "new_nonce",
    "new_record_id",
    "parse_timestamp",
    "record_from_dict",
    "timestamp",
]

# ---------------------------------------------------------------------------------------------
# Field types (their grammars are in protocol.grammar, which needs no pydantic)
# ---------------------------------------------------------------------------------------------

Timestamp: TypeAlias = Annotated[StrictStr, AfterValidator(_check_timestamp)]
#: 128 random bits as 32 lowercase hex characters (record ids and nonces)
Hex128: TypeAlias = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{32}$")]
#: an organisation id: lowercase, DNS-like (e.g. "example-platform.com")
OrgId: TypeAlias = Annotated[StrictStr, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
#: a log origin (C2SP tlog-checkpoint first line): schema-less URL, e.g. "hashfed.example.com/csam"
Origin: TypeAlias = Annotated[
    StrictStr, Field(pattern=r"^[a-z0-9][a-z0-9.:-]{0,127}(/[a-zA-Z0-9._~-]{1,64}){0,8}$")
]
Label: TypeAlias = Annotated[StrictStr, AfterValidator(_check_label)]


_Printable = AfterValidator(_check_printable)
ShortText: TypeAlias = Annotated[StrictStr, Field(min_length=1, max_length=64), _Printable]
Text: TypeAlias = Annotated[StrictStr, Field(min_length=1, max_length=1024), _Printable]
RefText: TypeAlias = Annotated[StrictStr, Field(min_length=1, max_length=256), _Printable]
Url: TypeAlias = Annotated[StrictStr, Field(pattern=r"^https?://[^\s\x00-\x1f]{1,250}$")]
#: a C2SP signed-note verifier key: name+hex key id+base64(alg || key)
VKey: TypeAlias = Annotated[
    StrictStr, Field(pattern=r"^[^\s+]{1,128}\+[0-9a-f]{8}\+[A-Za-z0-9+/]{4,200}={0,2}$")
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


# ---------------------------------------------------------------------------------------------
# Parts of records
# ---------------------------------------------------------------------------------------------


class HashValue(_Model):
    """A hash of a registered type in canonical form (see protocol.hashtypes)."""

    type: StrictStr
    value: StrictStr
    quality: StrictInt | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        hashtypes.check_hash(self.type, self.value, self.quality)
        return self


class HashRef(_Model):
    """The (type, value) of a hash, without quality: what lookups are keyed on."""

    type: StrictStr
    value: StrictStr

    @model_validator(mode="after")
    def _check(self) -> Self:
        ht = hashtypes.get_hash_type(self.type)
        if ht.max_length and len(self.value) > ht.max_length:
            raise FormatError(f"{self.type} value too long", field="hash.value")
        ht.check(self.value)
        return self


class Vetting(_Model):
    """How the entry was vetted before publication."""

    status: Literal["confirmed", "unconfirmed"]
    #: independent human reviews that agreed; a confirmed entry has at least one
    reviews: Annotated[StrictInt, Field(ge=0, le=1000)]
    #: the review standard applied, a short code the publisher documents (e.g. "two-reviewer")
    standard: ShortText | None = None
    at: Timestamp | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.status == "confirmed" and self.reviews < 1:
            raise ValueError("a confirmed entry needs at least one review")
        return self


class Hop(_Model):
    """One re-share of an entry: the log it travelled through and its record id there."""

    org: OrgId
    origin: Origin
    record: Hex128
    at: Timestamp


class Provenance(_Model):
    """Where an entry comes from, and the path of nodes it was re-shared through."""

    #: the organisation that first vetted the media
    org: OrgId
    #: origin of the log the entry was first published in
    node: Origin
    #: the entry's record id in that origin log
    record: Hex128
    first_seen: Timestamp
    #: an opaque reference into the origin's case system (never a URL to media)
    source_ref: RefText | None = None
    chain: Annotated[tuple[Hop, ...], Field(max_length=16)] = ()


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


class _RecordBase(_Model):
    v: Literal[1] = 1
    id: Hex128
    author: OrgId
    created: Timestamp
    #: 128 random bits, so that a leaf hash reveals nothing about a record the reader cannot see
    nonce: Hex128


class Entry(_RecordBase):
    """One hash signal: a hash of confirmed media with its labels, vetting and provenance."""

    type: Literal["entry"] = "entry"
    hash: HashValue
    media: Literal["image", "video"]
    labels: Annotated[tuple[Label, ...], Field(max_length=32)] = ()
    generated: Literal["generated", "not_generated", "unknown"] = "unknown"
    vetting: Vetting
    provenance: Provenance
    expires: Timestamp | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        ht = hashtypes.get_hash_type(self.hash.type)
        if self.media not in ht.media:
            allowed = " or ".join(sorted(ht.media))
            raise FormatError(
                f"{self.hash.type} hashes are for {allowed} media, not {self.media}",
                field="media",
            )
        if len(set(self.labels)) != len(self.labels):
            raise FormatError("labels must not repeat", field="labels")
        return self

    def hash_ref(self) -> HashRef:
        return HashRef(type=self.hash.type, value=self.hash.value)


class Revocation(_RecordBase):
    """Withdraws an earlier entry of the same log, by its record id."""

    type: Literal["revocation"] = "revocation"
    target: Hex128
    target_hash: HashRef
    #: whether the author of the entry revoked it, or a coordinator of the federation
    role: Literal["author", "coordinator"] = "author"
    reason: RevocationReason
    text: Text | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.reason == "other" and self.text is None:
            raise FormatError("reason 'other' needs a text", field="text")
        return self


class Attestation(_RecordBase):
    """Another organisation's signed opinion of an entry (never media)."""

    type: Literal["attestation"] = "attestation"
    target: Hex128
    #: origin of the log that holds the target entry
    target_origin: Origin
    target_hash: HashRef
    opinion: Literal["agree", "disagree", "also_vetted", "sighting"]
    reason: Text | None = None
    #: for "sighting": how many matches were seen
    count: Annotated[StrictInt, Field(ge=1, le=2**53 - 1)] | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.opinion == "disagree" and self.reason is None:
            raise FormatError("a disagreement needs a reason", field="reason")
        if (self.opinion == "sighting") != (self.count is not None):
            raise FormatError("count is required for, and only for, sightings", field="count")
        return self


class Membership(_RecordBase):
    """A coordinator's decision about a partner: admitted, key rotated, suspended or removed."""

    type: Literal["membership"] = "membership"
    action: Literal["admit", "rotate", "suspend", "remove"]
    member: OrgId
    name: Text | None = None
    node_url: Url | None = None
    vkeys: Annotated[tuple[VKey, ...], Field(max_length=8)] = ()
    roles: Annotated[tuple[MemberRole, ...], Field(max_length=5)] = ()
    valid_from: Timestamp | None = None
    valid_until: Timestamp | None = None
    reason: Text | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.action == "admit":
            for name in ("name", "node_url", "valid_from"):
                if getattr(self, name) is None:
                    raise FormatError(f"admitting a member needs {name}", field=name)
            if not self.vkeys or not self.roles:
                raise FormatError("admitting a member needs vkeys and roles", field="vkeys")
        if self.action == "rotate" and not self.vkeys:
            raise FormatError("a rotation needs the new vkeys", field="vkeys")
        if (
            self.valid_from is not None
            and self.valid_until is not None
            and self.valid_until <= self.valid_from
        ):
            raise FormatError("valid_until must be after valid_from", field="valid_until")
        if len(set(self.roles)) != len(self.roles):
            raise FormatError("roles must not repeat", field="roles")
        return self


Record: TypeAlias = Annotated[
    Entry | Revocation | Attestation | Membership, Field(discriminator="type")
]

_RECORD_ADAPTER: TypeAdapter[Entry | Revocation | Attestation | Membership] = TypeAdapter(Record)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _format_validation_error(e: ValidationError) -> FormatError:
    first = e.errors(include_url=False)[0]
    parts = [str(p) for p in first["loc"]]
    if parts and parts[0] in RECORD_TYPES:
        parts = parts[1:]  # the discriminated union's tag adds nothing for a person
    loc = ".".join(parts)
    msg = first["msg"]
    ctx_error = (first.get("ctx") or {}).get("error")
    if isinstance(ctx_error, FormatError):
        return FormatError(ctx_error.message, field=ctx_error.field or loc or None)
    msg = msg.removeprefix("Value error, ")
    return FormatError(f"invalid record: {msg}", field=loc or None)


def encode_record(record: Entry | Revocation | Attestation | Membership) -> bytes:
    """The record's leaf data: RFC 8785 canonical JSON, absent optional fields omitted."""
    data = canonicalize(record.model_dump(mode="json", exclude_none=True))
    if len(data) > MAX_RECORD_SIZE:
        raise RecordTooLargeError(
            f"record is {len(data)} bytes; the limit is {MAX_RECORD_SIZE}", field=None
        )
    return data


def record_from_dict(value: Mapping[str, Any]) -> Entry | Revocation | Attestation | Membership:
    """Build and validate a record from a JSON-like mapping; FormatError naming the field."""
    try:
        return _RECORD_ADAPTER.validate_python(value)
    except ValidationError as e:
        raise _format_validation_error(e) from e


def entry_from_dict(value: Mapping[str, Any]) -> Entry:
    """Like :func:`record_from_dict` for a mapping known to be an entry (twice as fast)."""
    try:
        return Entry.model_validate(value)
    except ValidationError as e:
        raise _format_validation_error(e) from e


def decode_record(data: bytes) -> Entry | Revocation | Attestation | Membership:
    """Parse leaf data; accept only a valid record in exact canonical form.

    Duplicate keys, whitespace, key order, escapes, ``null`` fields and anything else that would not
    re-encode to the very same bytes are refused: the re-encoding check covers them all at once.
    """
    if len(data) > MAX_RECORD_SIZE:
        raise RecordTooLargeError(
            f"record is {len(data)} bytes; the limit is {MAX_RECORD_SIZE}", field=None
        )
    try:
        record = _RECORD_ADAPTER.validate_json(data, strict=False)
    except ValidationError as e:
        raise _format_validation_error(e) from e
    if encode_record(record) != data:
        raise FormatError("record is not in RFC 8785 canonical form (or carries null fields)")
    return record

"""Provenance across re-shares: the re-sharer's entry, its receipt, and verifying the chain.

When node B re-shares an entry it mirrors from A's log, it appends an entry of its own with the same
hash, media, labels, generated flag, vetting and expiry, and the upstream provenance with one
:class:`~protocol.records.Hop` appended (``org`` = B's org, ``origin`` = A's log origin, ``record``
= the upstream record id, ``at`` = when). :func:`reshared_entry_fields` builds exactly those
fields, so the node that re-shares and everyone who verifies agree on them to the byte.

B keeps a :class:`Receipt` for the new entry: the upstream leaf bytes, A's signed checkpoint, the
inclusion proof of the leaf in it, and, if A's entry was itself a re-share, A's receipt for it.
:func:`verify_receipt_chain` walks such a chain back to the original entry, one hop per receipt,
newest first. For each hop it checks, in this order:

1. the hop's ``org`` is the downstream entry's author and its ``origin`` is the receipt's origin;
2. the checkpoint is signed by the key the caller maps the origin to (SignatureError);
3. the leaf is included at ``index`` in that checkpoint (ProofError);
4. the leaf is an entry whose id is the hop's ``record``;
5. the downstream entry is exactly :func:`reshared_entry_fields` of it: nothing added, dropped or
   raised on the way (a label, the vetting, the provenance chain);
6. an upstream receipt is present exactly when the upstream entry is itself a re-share; the
   original entry's provenance must name its own log and record id (SPEC.md "entry").

Every failure is a :class:`~protocol.errors.VerificationError` (SignatureError, ProofError, or the
base class for the structural checks) whose message and ``field`` name the hop
(``provenance.chain[i]``). Receipts travel as RFC 8785 canonical JSON (:meth:`Receipt.to_json`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from protocol import merkle
from protocol.checkpoint import Checkpoint, verify_checkpoint
from protocol.errors import (
    FormatError,
    ProofError,
    ProtocolError,
    SignatureError,
    VerificationError,
)
from protocol.jcs import MAX_SAFE_INTEGER, JSONValue, canonicalize, parse_json
from protocol.note import Verifier
from protocol.records import MAX_RECORD_SIZE, Entry, Hop, Origin, decode_record

__all__ = [
    "MAX_CHECKPOINT_SIZE",
    "MAX_RECEIPT_DEPTH",
    "MAX_RECEIPT_SIZE",
    "Receipt",
    "reshared_entry_fields",
    "verify_receipt_chain",
]

#: A receipt chain is at most as long as a provenance chain may be (SPEC.md limits: 16 hops).
MAX_RECEIPT_DEPTH: Final = 16
#: A checkpoint note with its text and up to 100 signature lines fits comfortably.
MAX_CHECKPOINT_SIZE: Final = 32 * 1024
#: The JSON of a receipt of the maximum depth with maximum-size leaves and checkpoints fits.
MAX_RECEIPT_SIZE: Final = 2 * 1024 * 1024
#: An inclusion proof in a tree of up to 2**64 leaves has at most 64 hashes.
_MAX_PROOF_LEN: Final = 64

_RECORD_FIELDS: Final = ("id", "author", "created", "nonce")
_JSON_KEYS: Final = frozenset({"origin", "index", "leaf", "checkpoint", "proof", "upstream"})
_B64_RE: Final = re.compile(
    r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", re.ASCII
)
_ORIGIN: TypeAdapter[str] = TypeAdapter(Origin)


def _check_origin(value: object, field: str) -> str:
    try:
        return _ORIGIN.validate_python(value, strict=True)
    except ValidationError as e:
        raise FormatError(f"not a log origin: {value!r}", field=field) from e


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, field: str) -> bytes:
    """Standard padded base64 in its one canonical spelling (so to_json round-trips exactly)."""
    if not isinstance(value, str) or _B64_RE.fullmatch(value) is None:
        raise FormatError("expected standard padded base64", field=field)
    data = base64.b64decode(value, validate=True)
    if _b64(data) != value:
        raise FormatError("base64 has non-zero padding bits", field=field)
    return data


@dataclass(frozen=True)
class Receipt:
    """Proof that an upstream entry is in its log: what a re-sharer keeps for each re-shared entry.

    Validated when built (FormatError): an origin, an index in 0..2**53-1, a non-empty leaf of at
    most the record size limit, a checkpoint note of at most ``MAX_CHECKPOINT_SIZE`` bytes, at most
    64 proof hashes of 32 bytes, and at most ``MAX_RECEIPT_DEPTH`` receipts in the chain.
    """

    #: origin of the upstream log
    origin: str
    #: the upstream entry's leaf index in that log
    index: int
    #: the upstream record's exact leaf bytes
    leaf: bytes
    #: the upstream log's signed checkpoint note (its size is more than ``index``)
    checkpoint: bytes
    #: RFC 9162 inclusion proof of ``leaf`` at ``index`` in that checkpoint's tree
    proof: tuple[bytes, ...]
    #: the upstream entry's own receipt, when it was itself re-shared
    upstream: Receipt | None = None

    def __post_init__(self) -> None:
        _check_origin(self.origin, "origin")
        if (
            not isinstance(self.index, int)
            or isinstance(self.index, bool)
            or not 0 <= self.index <= MAX_SAFE_INTEGER
        ):
            raise FormatError("index must be an integer from 0 to 2**53-1", field="index")
        if not isinstance(self.leaf, bytes) or not 0 < len(self.leaf) <= MAX_RECORD_SIZE:
            raise FormatError(f"leaf must be 1 to {MAX_RECORD_SIZE} bytes", field="leaf")
        if not isinstance(self.checkpoint, bytes) or not 0 < len(self.checkpoint) <= (
            MAX_CHECKPOINT_SIZE
        ):
            raise FormatError(
                f"checkpoint must be 1 to {MAX_CHECKPOINT_SIZE} bytes", field="checkpoint"
            )
        if not isinstance(self.proof, tuple) or len(self.proof) > _MAX_PROOF_LEN:
            raise FormatError(
                f"proof must be a tuple of at most {_MAX_PROOF_LEN} hashes", field="proof"
            )
        merkle.check_hashes(self.proof, "proof")
        if any(not isinstance(h, bytes) for h in self.proof):
            raise FormatError("proof hashes must be bytes", field="proof")
        if self.upstream is not None:
            if not isinstance(self.upstream, Receipt):
                raise FormatError("upstream must be a Receipt or None", field="upstream")
            if self.upstream.depth >= MAX_RECEIPT_DEPTH:
                raise FormatError(
                    f"a receipt chain holds at most {MAX_RECEIPT_DEPTH} receipts", field="upstream"
                )

    @property
    def depth(self) -> int:
        """How many receipts the chain holds, this one included."""
        depth, r = 1, self.upstream
        while r is not None:
            depth, r = depth + 1, r.upstream
        return depth

    def to_dict(self) -> dict[str, JSONValue]:
        """The JSON value: bytes as standard base64, ``upstream`` omitted when absent."""
        value: dict[str, JSONValue] = {
            "origin": self.origin,
            "index": self.index,
            "leaf": _b64(self.leaf),
            "checkpoint": _b64(self.checkpoint),
            "proof": [_b64(h) for h in self.proof],
        }
        if self.upstream is not None:
            value["upstream"] = self.upstream.to_dict()
        return value

    def to_json(self) -> bytes:
        """RFC 8785 canonical JSON of :meth:`to_dict`."""
        return canonicalize(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes) -> Receipt:
        """Parse a receipt strictly: I-JSON, exactly the known members with the right types,
        canonical base64, at most ``MAX_RECEIPT_DEPTH`` nested receipts. FormatError otherwise
        (whitespace and member order are not checked: a receipt is verified by its contents)."""
        if not isinstance(data, bytes | bytearray):
            raise FormatError("receipt must be bytes", field="receipt")
        if len(data) > MAX_RECEIPT_SIZE:
            raise FormatError(f"receipt is over {MAX_RECEIPT_SIZE} bytes", field="receipt")
        # +1: the proof array sits one level below its receipt object.
        value = parse_json(bytes(data), max_depth=MAX_RECEIPT_DEPTH + 1)
        return cls._from_value(value, "receipt", 1)

    @classmethod
    def _from_value(cls, value: JSONValue, where: str, depth: int) -> Receipt:
        if depth > MAX_RECEIPT_DEPTH:
            raise FormatError(
                f"a receipt chain holds at most {MAX_RECEIPT_DEPTH} receipts", field=where
            )
        if not isinstance(value, dict):
            raise FormatError("a receipt must be a JSON object", field=where)
        keys = set(value)
        missing = sorted(_JSON_KEYS - {"upstream"} - keys)
        unknown = sorted(keys - _JSON_KEYS)
        if missing or unknown:
            what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
            raise FormatError(f"receipt members: {what}", field=where)
        proof = value["proof"]
        if not isinstance(proof, list):
            raise FormatError("proof must be an array", field=f"{where}.proof")
        index = value["index"]
        if not isinstance(index, int) or isinstance(index, bool):
            raise FormatError("index must be an integer", field=f"{where}.index")
        upstream = value.get("upstream")
        try:
            return cls(
                origin=value["origin"],  # type: ignore[arg-type]  # checked in __post_init__
                index=index,
                leaf=_unb64(value["leaf"], f"{where}.leaf"),
                checkpoint=_unb64(value["checkpoint"], f"{where}.checkpoint"),
                proof=tuple(_unb64(h, f"{where}.proof[{i}]") for i, h in enumerate(proof)),
                upstream=(
                    None
                    if upstream is None and "upstream" not in value
                    else cls._from_value(upstream, f"{where}.upstream", depth + 1)
                ),
            )
        except FormatError as e:
            if e.field is None:
                field = where
            elif e.field.startswith(where):
                field = e.field
            else:
                field = f"{where}.{e.field}"
            raise FormatError(e.message, field=field) from e


def reshared_entry_fields(
    upstream: Entry, *, org: str, upstream_origin: str, at: str
) -> dict[str, Any]:
    """The fields of the entry ``org`` appends when re-sharing ``upstream`` (a JSON-like dict).

    Everything but ``id``, ``author``, ``created`` and ``nonce``, which the re-sharer fills in:
    ``{**fields, "id": ..., "author": org, ...}`` builds the entry. Hash, media, labels, generated,
    vetting and expires are copied; provenance is copied with
    ``Hop(org, upstream_origin, upstream.id, at)`` appended. FormatError if the hop is malformed or
    the chain already has the maximum 16 hops.
    """
    if not isinstance(upstream, Entry):
        raise FormatError("only entries can be re-shared", field="upstream")
    try:
        hop = Hop(org=org, origin=upstream_origin, record=upstream.id, at=at)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise FormatError(f"invalid hop: {first['msg']}", field=f"hop.{loc}") from e
    if len(upstream.provenance.chain) >= 16:
        raise FormatError(
            "the entry has been re-shared 16 times, the most a chain records",
            field="provenance.chain",
        )
    fields = _entry_fields(upstream)
    fields["provenance"]["chain"].append(hop.model_dump(mode="json"))
    return fields


def _entry_fields(entry: Entry) -> dict[str, Any]:
    fields = entry.model_dump(mode="json", exclude_none=True)
    for name in _RECORD_FIELDS:
        del fields[name]
    return fields


def _verifier_for(key_for_origin: Callable[[str], Verifier], origin: str) -> Verifier:
    try:
        verifier = key_for_origin(origin)
    except SignatureError:
        raise
    except (LookupError, ProtocolError) as e:
        # A dict's __getitem__ makes a fine key_for_origin; a missing origin is an unknown key.
        raise SignatureError(f"no key is known for the log {origin}") from e
    if not isinstance(verifier, Verifier):
        raise SignatureError(f"no key is known for the log {origin}")
    return verifier


def _verify_hop(
    entry: Entry, pos: int, receipt: Receipt, key_for_origin: Callable[[str], Verifier]
) -> Entry:
    """Check the last hop of ``entry``'s chain (at ``pos``) against ``receipt``; return the
    upstream entry it proves."""
    hop = entry.provenance.chain[pos]
    if hop.org != entry.author:
        raise VerificationError(
            f"the hop names {hop.org} as re-sharer, but the entry's author is {entry.author}"
        )
    if hop.origin != receipt.origin:
        raise VerificationError(
            f"the hop names the log {hop.origin}, the receipt is for {receipt.origin}"
        )
    verifier = _verifier_for(key_for_origin, receipt.origin)
    try:
        cp: Checkpoint = verify_checkpoint(receipt.checkpoint, verifier, origin=receipt.origin)
    except FormatError as e:
        raise SignatureError(f"the checkpoint of {receipt.origin} is malformed: {e}") from e
    try:
        merkle.verify_inclusion(
            merkle.leaf_hash(receipt.leaf), receipt.index, cp.size, receipt.proof, cp.root_hash
        )
    except (FormatError, ProofError) as e:
        raise ProofError(
            f"leaf {receipt.index} is not proven in {receipt.origin} at size {cp.size}: {e}"
        ) from e
    try:
        upstream = decode_record(receipt.leaf)
    except FormatError as e:
        raise VerificationError(f"the upstream leaf is not a valid record: {e}") from e
    if not isinstance(upstream, Entry):
        raise VerificationError(f"the upstream leaf is a {upstream.type}, not an entry")
    if upstream.id != hop.record:
        raise VerificationError(
            f"the hop names record {hop.record}, the receipt proves record {upstream.id}"
        )
    try:
        expected = reshared_entry_fields(
            upstream, org=entry.author, upstream_origin=receipt.origin, at=hop.at
        )
    except FormatError as e:
        raise VerificationError(f"the upstream entry cannot be re-shared: {e}") from e
    actual = _entry_fields(entry)
    if actual != expected:
        changed = sorted(
            k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k)
        )
        raise VerificationError(
            f"the re-shared entry differs from the upstream entry in {', '.join(changed)}"
        )
    return upstream


def verify_receipt_chain(
    entry: Entry, receipt: Receipt, key_for_origin: Callable[[str], Verifier]
) -> list[str]:
    """Verify that ``entry`` is a faithful re-share, hop by hop back to the original entry.

    ``key_for_origin`` maps a log origin to the verifier of the node that owns it (e.g. from the
    membership state and the node's vkey); it may raise ``KeyError`` or SignatureError for an
    unknown origin. Returns the origins of the logs the entry travelled through, the original log
    first and the log ``entry`` was re-shared from last (``entry``'s own log is the caller's to
    know). Raises a VerificationError subclass naming the hop (see the module docstring);
    FormatError only for arguments of the wrong type.
    """
    if not isinstance(entry, Entry):
        raise FormatError("expected an entry", field="entry")
    if not isinstance(receipt, Receipt):
        raise FormatError("expected a Receipt", field="receipt")
    if not entry.provenance.chain:
        raise VerificationError(
            "the entry is not a re-share: its provenance chain is empty", field="provenance.chain"
        )
    origins: list[str] = []
    current: Entry = entry
    r: Receipt | None = receipt
    while r is not None:
        pos = len(current.provenance.chain) - 1
        field = f"provenance.chain[{pos}]"
        where = f"hop {pos} (re-shared by {current.provenance.chain[pos].org} from {r.origin})"
        try:
            upstream = _verify_hop(current, pos, r, key_for_origin)
            if upstream.provenance.chain and r.upstream is None:
                raise VerificationError(
                    "the upstream entry is itself a re-share, but there is no upstream receipt"
                )
            if not upstream.provenance.chain:
                if r.upstream is not None:
                    raise VerificationError(
                        "the upstream entry is an original, yet an upstream receipt is given"
                    )
                if (upstream.provenance.node, upstream.provenance.record) != (
                    r.origin,
                    upstream.id,
                ):
                    raise VerificationError(
                        "the original entry's provenance does not name its own log and record"
                    )
        except ProtocolError as e:
            raise type(e)(f"{where}: {e.message}", field=field) from e
        origins.append(r.origin)
        current, r = upstream, r.upstream
    return origins[::-1]

"""Equivocation proofs: two signed checkpoints of one log that cannot both be true.

An :class:`EquivocationProof` holds two signed checkpoint notes of one origin and, when their sizes
differ, the hashes that show the smaller tree is not a prefix of the larger one. It travels as
RFC 8785 canonical JSON::

    {"consistency_proof": ["<base64 hash>", ...], "note_a": "<note text>",
     "note_b": "<note text>", "type": "equivocation"}

:func:`verify_equivocation` returns ``None`` when the proof *is* convincing evidence that the log
equivocated, and raises :class:`~protocol.errors.VerificationError` (or FormatError /
SignatureError) when it is not. What convinces:

* **same size, different roots**: both notes verify with the log key; nothing else is needed;
* **different sizes** ``m < n``: the ``consistency_proof`` is the RFC 9162 §2.1.4 path from ``m``
  to ``n`` computed from the *larger* tree, always starting with the hash of the first complete
  subtree (for a power-of-two ``m`` that is the larger tree's hash of leaves ``[0, m)``, which the
  RFC path leaves out because an honest verifier substitutes the old root). Folding the path gives
  two roots: the one for ``n`` must equal the signed root of ``n`` (so, by collision resistance,
  the path really is the larger tree's), and the one for ``m`` must *differ* from the signed root
  of ``m``. A path that does not reach the larger root proves nothing (anyone can make up hashes)
  and is refused; a path under which both roots match shows the two notes are consistent.

A rollback alone (a later note with a smaller size) is not equivocation: the two notes may both be
true. Only the pair plus such a path is evidence.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from protocol import merkle, tiles
from protocol.checkpoint import Checkpoint, verify_checkpoint
from protocol.errors import FormatError, InconsistentTreeError, ProofError, VerificationError
from protocol.jcs import canonicalize, parse_json
from protocol.note import Verifier
from protocol.tiles import TileRef

__all__ = [
    "EquivocationProof",
    "consistency_evidence",
    "evidence_tiles",
    "proof_of",
    "verify_equivocation",
]

#: longest path accepted: two per tree level of a 2**64 tree, plus the seed
_MAX_PATH = 130
_MAX_NOTE = 64 * 1024


@dataclass(frozen=True)
class EquivocationProof:
    """Two signed notes of one log (exact bytes) and, for different sizes, the path between them."""

    note_a: bytes
    note_b: bytes
    consistency_proof: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        for name in ("note_a", "note_b"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or not value or len(value) > _MAX_NOTE:
                raise FormatError(f"{name} must be a non-empty note of at most 64 KiB",
                                  field=name)
        if not isinstance(self.consistency_proof, tuple) or len(self.consistency_proof) > _MAX_PATH:
            raise FormatError("consistency_proof must be a tuple of at most 130 hashes",
                              field="consistency_proof")
        merkle.check_hashes(self.consistency_proof, "consistency_proof")

    def to_dict(self) -> dict[str, object]:
        return {
            "type": "equivocation",
            "note_a": self.note_a.decode("utf-8", "replace"),
            "note_b": self.note_b.decode("utf-8", "replace"),
            "consistency_proof": [base64.b64encode(h).decode() for h in self.consistency_proof],
        }

    def to_json(self) -> bytes:
        """Canonical JSON (notes are UTF-8 text by the signed-note grammar, so they round-trip)."""
        return canonicalize(self.to_dict())  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, data: bytes) -> EquivocationProof:
        """Parse a proof; FormatError for anything that is not exactly the shape above."""
        value = parse_json(data)
        if not isinstance(value, dict) or value.get("type") != "equivocation":
            raise FormatError("not an equivocation proof (type must be \"equivocation\")",
                              field="type")
        extra = set(value) - {"type", "note_a", "note_b", "consistency_proof"}
        if extra:
            raise FormatError(f"unknown fields {sorted(extra)}", field=sorted(extra)[0])
        notes = []
        for name in ("note_a", "note_b"):
            note = value.get(name)
            if not isinstance(note, str):
                raise FormatError(f"{name} must be the note's text", field=name)
            notes.append(note.encode("utf-8"))
        raw = value.get("consistency_proof", [])
        if not isinstance(raw, list):
            raise FormatError("consistency_proof must be a list", field="consistency_proof")
        path = []
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                raise FormatError("a proof hash must be base64 text",
                                  field=f"consistency_proof[{i}]")
            try:
                decoded = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError) as e:
                raise FormatError("a proof hash is not valid base64",
                                  field=f"consistency_proof[{i}]") from e
            if base64.b64encode(decoded).decode("ascii") != item:
                # one spelling per hash, as receipts: no non-zero padding bits, no variants
                raise FormatError("a proof hash is not in canonical base64",
                                  field=f"consistency_proof[{i}]")
            path.append(decoded)
        return cls(notes[0], notes[1], tuple(path))


def consistency_evidence(
    old_size: int, new_size: int, tree_tiles: Mapping[TileRef, bytes]
) -> tuple[bytes, ...]:
    """The path :func:`verify_equivocation` expects, from the larger tree's tiles at ``new_size``.

    Needs the tiles of :func:`protocol.tiles.consistency_proof_tiles` plus, for a power-of-two
    ``old_size``, those of :func:`protocol.tiles.root_tiles` at ``old_size`` (read at
    ``new_size``: a wider tile at the same position serves).
    """
    if not 0 < old_size < new_size:
        raise FormatError("evidence needs 0 < old_size < new_size", field="old_size")
    path = tiles.consistency_proof(old_size, new_size, tree_tiles)
    if old_size & (old_size - 1) == 0:
        path.insert(0, tiles.root_from_tiles(old_size, tree_tiles))
    return tuple(path)


def evidence_tiles(old_size: int, new_size: int) -> set[TileRef]:
    """The tiles (at ``new_size``) that :func:`consistency_evidence` reads."""
    refs = tiles.consistency_proof_tiles(old_size, new_size)
    if old_size & (old_size - 1) == 0:
        refs |= {
            tiles.tile_ref_at(r.level, r.n, new_size) for r in tiles.root_tiles(old_size)
        }
    return refs


def proof_of(error: InconsistentTreeError) -> EquivocationProof | None:
    """The EquivocationProof an error's detector could build, or None (see its ``path``)."""
    if error.path is None or len(error.evidence) != 2:
        return None
    return EquivocationProof(error.evidence[0], error.evidence[1], error.path)


def verify_equivocation(proof: EquivocationProof, log: Verifier) -> None:
    """Return None if ``proof`` shows that the log signed two inconsistent checkpoints.

    Raises SignatureError / FormatError (naming note "a" or "b") if a note does not verify with
    ``log``, and VerificationError if the pair is consistent or the path is not convincing.
    """
    cps: list[Checkpoint] = []
    for label, note in (("a", proof.note_a), ("b", proof.note_b)):
        try:
            cps.append(verify_checkpoint(note, log))
        except (FormatError, VerificationError) as e:
            raise type(e)(f"note {label}: {e.message}", field=e.field) from e
    old, new = sorted(cps, key=lambda c: c.size)
    path = proof.consistency_proof
    if old.size == new.size:
        if old.root_hash == new.root_hash:
            raise VerificationError(
                f"not equivocation: both notes sign size {old.size} with the same root"
            )
        if path:
            raise VerificationError("two notes of one size need no consistency path")
        return
    if old.size == 0:
        raise VerificationError("a note of size 0 is a prefix of every tree: not equivocation")
    if not path:
        raise VerificationError(
            f"notes of sizes {old.size} and {new.size} are not evidence without a consistency "
            "path from the larger tree"
        )
    # The path's own first element is the seed, even for a power-of-two old size: nothing is
    # taken from the (suspect) old checkpoint.
    try:
        fr, sr = merkle.consistency_roots(old.size, new.size, path)
    except ProofError as e:
        raise VerificationError(f"the consistency path does not fit: {e.message}") from e
    if sr != new.root_hash:
        raise VerificationError(
            f"the consistency path does not lead to the signed root of size {new.size}, so it "
            "proves nothing about that tree"
        )
    if fr == old.root_hash:
        raise VerificationError(
            f"not equivocation: the tree of size {old.size} is a prefix of the tree of size "
            f"{new.size}"
        )


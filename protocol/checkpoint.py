"""C2SP transparency-log checkpoints and witness cosignatures (tlog-checkpoint, tlog-cosignature).

A checkpoint is the text of a signed note (:mod:`protocol.note`)::

    <origin>\\n<tree size, decimal>\\n<base64 root hash>\\n[<extension line>\\n ...]

signed by the log's key, whose name is the origin. Witnesses add *cosignatures*
(c2sp.org/tlog-cosignature, ``cosignature/v1``, signature type 0x04): a note signature whose bytes
are ``uint64 big-endian timestamp || Ed25519 signature`` over::

    cosignature/v1\\ntime <timestamp>\\n<checkpoint text>

The Ed25519 cosignature does not commit to the witness's name, so one witness key must never be
used under two names (the spec's rule, not something a verifier can check).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from protocol.errors import FormatError, SignatureError
from protocol.merkle import EMPTY_ROOT
from protocol.note import (
    ED25519_SIGNATURE_SIZE,
    MAX_SIGNATURES,
    NoteSignature,
    PrivateKey,
    PublicKey,
    Signer,
    Verifier,
    ed25519_verify,
    open_note,
    sign_note,
    split_note,
)

__all__ = [
    "ALG_COSIGNATURE_V1",
    "HASH_SIZE",
    "MAX_TIMESTAMP",
    "Checkpoint",
    "CosignatureSigner",
    "CosignatureVerifier",
    "add_cosignatures",
    "cosignature_timestamp",
    "cosignatures",
    "parse_checkpoint",
    "sign_checkpoint",
    "verify_checkpoint",
]

#: Signature type byte of timestamped Ed25519 cosignatures (c2sp.org/tlog-cosignature).
ALG_COSIGNATURE_V1: Final = 0x04

#: Root hashes are SHA-256 (RFC 6962 Merkle tree).
HASH_SIZE: Final = 32

#: tlog-cosignature: the timestamp "MUST NOT exceed 2^63 - 1".
MAX_TIMESTAMP: Final = 2**63 - 1

#: Go's tlog.ParseTree and torchwood parse the size as int64, so a larger size would be refused by
#: the Go tooling we must interoperate with.
MAX_TREE_SIZE: Final = 2**63 - 1

_TIMESTAMP_SIZE: Final = 8

# Key objects are built only through their class methods (pyca style); see protocol.note.
_CONSTRUCT: Final = object()
_SIZE_RE: Final = re.compile(r"0|[1-9][0-9]*", re.ASCII)


def _check_line(value: object, *, field: str) -> str:
    """A checkpoint line: a non-empty str without newline or other control characters."""
    if not isinstance(value, str) or not value:
        raise FormatError("must be a non-empty string", field=field)
    if any(c < " " for c in value):
        raise FormatError("must not contain newlines or control characters", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise FormatError("must be valid Unicode", field=field) from e
    return value


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head as a c2sp.org/tlog-checkpoint note text. Validated when built."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # The spec only RECOMMENDS that origins avoid spaces and "+", and says clients must not
        # assume it, so only the line grammar is enforced here.
        _check_line(self.origin, field="origin")
        if (
            not isinstance(self.size, int)
            or isinstance(self.size, bool)
            or not 0 <= self.size <= MAX_TREE_SIZE
        ):
            raise FormatError("tree size must be an integer in [0, 2^63-1]", field="size")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise FormatError(f"root hash must be {HASH_SIZE} bytes", field="root_hash")
        if self.size == 0 and self.root_hash != EMPTY_ROOT:
            # RFC 9162: the empty tree's root is SHA-256(""). Any other root at size 0 claims a
            # tree that cannot exist; refusing it here keeps witnesses from cosigning one.
            raise FormatError("a tree of size 0 has the empty-tree root", field="root_hash")
        if not isinstance(self.extensions, tuple):
            raise FormatError("extensions must be a tuple of lines", field="extensions")
        for ext in self.extensions:
            _check_line(ext, field="extensions")

    def text(self) -> bytes:
        """The note text: origin, size, base64 root hash and extension lines, each ending in \\n."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root_hash).decode("ascii"),
            *self.extensions,
        ]
        return "".join(line + "\n" for line in lines).encode("utf-8")


def parse_checkpoint(text: bytes) -> Checkpoint:
    """Parse a checkpoint note text (no signatures) with the strict grammar; FormatError if not.

    Strict means: UTF-8, no control characters, every line newline-terminated and non-empty, size
    in canonical decimal (no sign, no leading zeros), root hash in canonical base64 of 32 bytes.
    Hence ``parse_checkpoint(t).text() == t`` for every accepted ``t``.
    """
    if not isinstance(text, bytes):
        raise FormatError("checkpoint must be bytes", field="checkpoint")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError("checkpoint is not valid UTF-8", field="checkpoint") from e
    if not decoded.endswith("\n"):
        raise FormatError("checkpoint must end with a newline", field="checkpoint")
    lines = decoded[:-1].split("\n")
    if len(lines) < 3:
        raise FormatError("checkpoint needs origin, size and root hash lines", field="checkpoint")
    origin, size_text, hash_text, *extensions = lines
    if not _SIZE_RE.fullmatch(size_text):
        raise FormatError("tree size is not a canonical decimal", field="size")
    size = int(size_text)
    if size > MAX_TREE_SIZE:
        raise FormatError("tree size exceeds 2^63-1", field="size")
    try:
        root_hash = base64.b64decode(hash_text, validate=True)
    except ValueError as e:  # binascii.Error is a ValueError
        raise FormatError("root hash is not base64", field="root_hash") from e
    if base64.b64encode(root_hash).decode("ascii") != hash_text:
        raise FormatError("root hash is not canonical base64", field="root_hash")
    # Checkpoint() checks the rest: empty or control-character lines, hash length.
    return Checkpoint(origin, size, root_hash, tuple(extensions))


def _cosigned_message(checkpoint_text: bytes, timestamp: int) -> bytes:
    return b"cosignature/v1\ntime %d\n" % timestamp + checkpoint_text


def cosignature_timestamp(sig: NoteSignature) -> int:
    """The timestamp inside a cosignature/v1 signature, without verifying it.

    FormatError if the signature is not ``8-byte timestamp || 64-byte Ed25519 signature`` or the
    timestamp exceeds 2^63-1.
    """
    if len(sig.signature) != _TIMESTAMP_SIZE + ED25519_SIGNATURE_SIZE:
        raise FormatError("not an Ed25519 cosignature/v1 signature", field="signature")
    timestamp = int.from_bytes(sig.signature[:_TIMESTAMP_SIZE], "big")
    if timestamp > MAX_TIMESTAMP:
        raise FormatError("cosignature timestamp exceeds 2^63-1", field="signature")
    return timestamp


class CosignatureVerifier(PublicKey):
    """A witness's cosignature/v1 public key (type 0x04). Build with :meth:`from_vkey`.

    Also a :class:`protocol.note.NoteVerifier`, so it can be passed to ``open_note``. Plain Ed25519
    (0x01) vkeys are refused by :meth:`from_vkey`: a log key is not a witness key.
    """

    ALG = ALG_COSIGNATURE_V1
    __slots__ = ()

    def verify(self, msg: bytes, sig: bytes) -> None:
        """Note-level check (``sig`` = timestamp || signature over the cosigned message)."""
        what = f"cosigner {self._name}+{self._key_id.hex()}"
        if len(sig) != _TIMESTAMP_SIZE + ED25519_SIGNATURE_SIZE:
            raise SignatureError(f"{what}: not a cosignature/v1 signature")
        timestamp = int.from_bytes(sig[:_TIMESTAMP_SIZE], "big")
        if timestamp > MAX_TIMESTAMP:
            raise SignatureError(f"{what}: timestamp exceeds 2^63-1")
        # Same guard as transparency-dev/formats: a cosigned note has at least three lines.
        if msg.count(b"\n") < 2:
            raise SignatureError(f"{what}: cosigned text is not a checkpoint")
        message = _cosigned_message(msg, timestamp)
        ed25519_verify(self._key, message, sig[_TIMESTAMP_SIZE:], what=what)

    def verify_cosignature(self, checkpoint_text: bytes, sig: NoteSignature) -> int:
        """Check ``sig`` is this witness's cosignature of ``checkpoint_text``; return its timestamp.

        SignatureError if the signature is from another key (name or key ID) or does not verify.
        """
        if (sig.name, sig.key_id) != (self._name, self._key_id):
            raise SignatureError(
                f"signature is from {sig.name}+{sig.key_id.hex()}, "
                f"not {self._name}+{self._key_id.hex()}"
            )
        self.verify(checkpoint_text, sig.signature)
        return int.from_bytes(sig.signature[:_TIMESTAMP_SIZE], "big")


class CosignatureSigner(PrivateKey):
    """A witness's cosignature/v1 key. Build with :meth:`generate` or :meth:`from_skey`."""

    ALG = ALG_COSIGNATURE_V1
    __slots__ = ()

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier.from_public_key(self._name, self._public_key)

    def cosign(self, checkpoint_text: bytes, timestamp: int) -> NoteSignature:
        """Cosign a checkpoint text at ``timestamp`` (POSIX seconds, chosen by the caller).

        The text must parse as a checkpoint: a witness has no business signing anything else.
        """
        parse_checkpoint(checkpoint_text)
        if (
            not isinstance(timestamp, int)
            or isinstance(timestamp, bool)
            or not 0 <= timestamp <= MAX_TIMESTAMP
        ):
            raise FormatError("timestamp must be an integer in [0, 2^63-1]", field="timestamp")
        sig = self._key.sign(_cosigned_message(checkpoint_text, timestamp))
        return NoteSignature(self._name, self._key_id, timestamp.to_bytes(8, "big") + sig)

    def __repr__(self) -> str:
        return f"CosignatureSigner(name={self._name!r}, key_id={self._key_id.hex()!r})"


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> bytes:
    """The signed note for ``cp``. The signer's key name must be the checkpoint's origin, since
    :func:`verify_checkpoint` (like tlog clients generally) requires it."""
    if cp.origin != signer.name:
        raise FormatError(
            f"checkpoint origin {cp.origin!r} is not the signer's name {signer.name!r}",
            field="origin",
        )
    return sign_note(cp.text(), signer)


def verify_checkpoint(
    note: bytes,
    log: Verifier,
    *,
    origin: str | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int = 0,
) -> Checkpoint:
    """Verify a signed checkpoint and return it.

    * the note must carry a valid signature by ``log``, and a bad signature from ``log`` or from
      any listed witness rejects the whole note (signed-note: clients SHOULD);
    * the origin line must equal ``log.name``, and ``origin`` if given;
    * at least ``quorum`` distinct witnesses (by name) must have valid cosignatures.

    SignatureError for any of these; FormatError if the note or checkpoint text is malformed.
    """
    if not isinstance(quorum, int) or isinstance(quorum, bool) or quorum < 0:
        raise FormatError("quorum must be a non-negative integer", field="quorum")
    verifiers: list[Verifier | CosignatureVerifier] = [log, *witnesses]
    try:
        parsed, signed = open_note(note, verifiers)
    except SignatureError as e:
        raise SignatureError(f"checkpoint from {log.name}: {e.message}") from e
    if log not in signed:
        raise SignatureError(f"checkpoint is not signed by the log key {log.name}")
    cp = parse_checkpoint(parsed.text)
    if cp.origin != log.name:
        raise SignatureError(f"checkpoint origin {cp.origin!r} is not the log's name {log.name!r}")
    if origin is not None and cp.origin != origin:
        raise SignatureError(f"checkpoint origin {cp.origin!r} is not the expected {origin!r}")
    cosigners = {v.name for v in signed if isinstance(v, CosignatureVerifier)}
    if len(cosigners) < quorum:
        raise SignatureError(
            f"checkpoint has {len(cosigners)} valid witness cosignatures, quorum is {quorum}"
        )
    return cp


def add_cosignatures(note: bytes, sigs: Sequence[NoteSignature]) -> bytes:
    """Append witness signatures to a signed checkpoint note; signatures are not verified here.

    Existing signature lines are copied byte for byte, except that a line with the same name and
    key ID as a new signature is replaced by it (Go's note.Sign does the same). FormatError if the
    note or its checkpoint text is malformed, or the result would exceed 100 signatures.
    """
    text, existing = split_note(note)
    parse_checkpoint(text)
    new = list(sigs)
    if not all(isinstance(s, NoteSignature) for s in new):
        raise FormatError("cosignatures must be NoteSignature values", field="sigs")
    replaced = {(s.name, s.key_id) for s in new}
    kept = [raw for sig, raw in existing if (sig.name, sig.key_id) not in replaced]
    if len(kept) + len(new) > MAX_SIGNATURES:
        raise FormatError(f"note would have more than {MAX_SIGNATURES} signatures", field="sigs")
    return text + b"\n" + b"".join(kept) + b"".join(s.line() for s in new)


def cosignatures(note: bytes, witnesses: Sequence[CosignatureVerifier]) -> dict[str, int]:
    """The valid cosignatures in ``note`` from ``witnesses``: witness name -> timestamp.

    Invalid or unknown signatures are left out (this reports, it does not judge the note; the log
    signature is not checked here, use :func:`verify_checkpoint` for that). If a witness signed
    more than once, its first valid cosignature counts. FormatError if the note is malformed.
    """
    text, sigs = split_note(note)
    by_id = {(w.name, w.key_id): w for w in witnesses}
    found: dict[str, int] = {}
    for sig, _ in sigs:
        witness = by_id.get((sig.name, sig.key_id))
        if witness is None or sig.name in found:
            continue
        try:
            found[sig.name] = witness.verify_cosignature(text, sig)
        except SignatureError:
            continue
    return found

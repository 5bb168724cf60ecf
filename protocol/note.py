"""C2SP signed notes: Ed25519 signers and verifiers, key strings, and signing and opening notes.

Implements https://c2sp.org/signed-note with the exact behaviour of Go's
``golang.org/x/mod/sumdb/note`` so that notes we sign open unchanged with ``note.Open`` and notes
signed by Go open here:

* a note is ``text || "\\n" || signature lines``; the text ends in a newline and is separated from
  the signatures by the *last* blank line;
* a signature line is ``"— " name " " base64(key ID || signature) "\\n"``;
* key ID = ``SHA-256(name || 0x0A || algorithm byte || public key)[:4]``;
* verifier keys are ``name+hexkeyid+base64(0x01 || public key)`` and signer keys
  ``PRIVATE+KEY+name+hexkeyid+base64(0x01 || seed)``;
* a note is limited to 100 signature lines, as in Go.

Opening a note follows ``note.Open``: signatures from unknown keys are ignored, the first signature
from each known key must verify (later repeats of a known key are skipped, as Go does), and at least
one known key must have signed.

Cosignatures (c2sp.org/tlog-cosignature) live in :mod:`protocol.checkpoint`; their verifier plugs
into :func:`open_note` through the :class:`NoteVerifier` protocol.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol, Self, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import FormatError, SignatureError

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "Note",
    "NoteSignature",
    "NoteVerifier",
    "Signer",
    "Verifier",
    "key_id",
    "open_note",
    "parse_note",
    "sign_note",
]

#: Signature type byte of plain Ed25519 note signatures (c2sp.org/signed-note).
ALG_ED25519: Final = 0x01

#: Go's note.Open rejects a note with more signature lines than this ("malformed note").
MAX_SIGNATURES: Final = 100

ED25519_PUBLIC_KEY_SIZE: Final = 32
ED25519_SEED_SIZE: Final = 32
ED25519_SIGNATURE_SIZE: Final = 64
KEY_ID_SIZE: Final = 4

_SIG_PREFIX: Final = "— ".encode()  # em dash U+2014, space
_SIG_SPLIT: Final = b"\n\n"
_PRIVATE_PREFIX: Final = "PRIVATE+KEY+"

# Exactly the alphabet and padding Go's base64.StdEncoding accepts (minus its habit of skipping
# CR/LF, which can never occur inside a signature line or a key string we would want to accept).
# Python's b64decode alone is laxer: it accepts some over-padded and mis-padded strings.
_B64_RE: Final = re.compile(
    r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", re.ASCII
)
_HEX8_RE: Final = re.compile(r"[0-9A-Fa-f]{8}", re.ASCII)

# Characters a key name must not contain: "+", ASCII control characters (a note containing one can
# never be opened), and Unicode White_Space, which is what Go's unicode.IsSpace tests. str.isspace()
# differs from White_Space (it also matches U+001C..U+001F), so the set is spelled out.
_BAD_NAME_CHAR_RE: Final = re.compile(
    "[+\x00-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
)
# Signed notes must not contain ASCII control characters other than newline.
_NOTE_CONTROL_RE: Final = re.compile("[\x00-\x09\x0b-\x1f]")

# Only the constructors below may build key objects (pyca style): the token keeps callers from
# wrapping arbitrary bytes without the checks that the class methods perform.
_CONSTRUCT: Final = object()


def _b64decode(text: str, *, field: str) -> bytes:
    """Decode standard padded base64 exactly as Go's ``base64.StdEncoding`` would."""
    if _B64_RE.fullmatch(text) is None:
        raise FormatError("invalid base64", field=field)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:  # unreachable after the regex; kept as a boundary
        raise FormatError("invalid base64", field=field) from e


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a valid key name: non-empty, no Unicode space, no ``+``.

    Same rule as Go's ``isValidName``; in addition ASCII control characters are refused because a
    note that contains one can never be opened (c2sp.org/signed-note forbids them).
    """
    if not name or _BAD_NAME_CHAR_RE.search(name) is not None:
        return False
    try:
        name.encode("utf-8")  # lone surrogates cannot be written as UTF-8
    except UnicodeEncodeError:
        return False
    return True


def _check_name(name: object, *, field: str = "name") -> str:
    if not isinstance(name, str) or not is_valid_name(name):
        raise FormatError(f"invalid key name {name!r}", field=field)
    return name


def key_id(name: str, alg_and_key: bytes) -> bytes:
    """The 4-byte key ID: ``SHA-256(name || 0x0A || alg || key)[:4]``.

    ``alg_and_key`` is the signature type byte followed by the public key, e.g. ``0x01 || pubkey``.
    """
    return hashlib.sha256(name.encode("utf-8") + b"\n" + alg_and_key).digest()[:KEY_ID_SIZE]


def _check_note_chars(data: bytes, *, field: str) -> None:
    """Signed notes must be UTF-8 with no ASCII control characters other than newline."""
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError("note is not valid UTF-8", field=field) from e
    if _NOTE_CONTROL_RE.search(decoded) is not None:
        raise FormatError("note contains a control character", field=field)


def parse_key_string(
    key: str, *, alg: int, key_size: int, private: bool, field: str
) -> tuple[str, bytes, bytes]:
    """Split a vkey (``name+id+b64``) or skey (``PRIVATE+KEY+name+id+b64``) like Go does.

    Returns ``(name, key_id, key material without the algorithm byte)``. The key ID in the string
    is returned as read; the caller checks it against the public key (for an skey the public key
    must first be derived from the seed).
    """
    if not isinstance(key, str):
        raise FormatError("key must be a string", field=field)
    if private:
        if not key.startswith(_PRIVATE_PREFIX):
            raise FormatError("signer key must start with PRIVATE+KEY+", field=field)
        key = key[len(_PRIVATE_PREFIX) :]
    # Go chops at the first "+" twice; the base64 part may itself contain "+".
    name, _, rest = key.partition("+")
    hex_id, _, key64 = rest.partition("+")
    if not is_valid_name(name):
        raise FormatError(f"invalid key name {name!r}", field=field)
    if _HEX8_RE.fullmatch(hex_id) is None:
        raise FormatError("key ID must be 8 hexadecimal digits", field=field)
    material = _b64decode(key64, field=field)
    if not material:
        raise FormatError("empty key", field=field)
    if material[0] != alg:
        raise FormatError(
            f"unsupported key algorithm 0x{material[0]:02x} (want 0x{alg:02x})", field=field
        )
    if len(material) != 1 + key_size:
        raise FormatError(f"key must be {key_size} bytes", field=field)
    return name, bytes.fromhex(hex_id), material[1:]


def format_key_string(name: str, kid: bytes, alg: int, key: bytes, *, private: bool) -> str:
    """Inverse of :func:`parse_key_string` (lowercase hex key ID, as Go writes it)."""
    prefix = _PRIVATE_PREFIX if private else ""
    return f"{prefix}{name}+{kid.hex()}+{_b64encode(bytes([alg]) + key)}"


def load_ed25519_public(public_key: bytes, *, field: str) -> Ed25519PublicKey:
    """Wrap cryptography's loader so that a bad key is a FormatError."""
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise FormatError("Ed25519 public key must be 32 bytes", field=field)
    try:
        return Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError as e:
        raise FormatError("invalid Ed25519 public key", field=field) from e


def load_ed25519_seed(seed: bytes, *, field: str) -> Ed25519PrivateKey:
    if not isinstance(seed, bytes) or len(seed) != ED25519_SEED_SIZE:
        raise FormatError("Ed25519 seed must be 32 bytes", field=field)
    try:
        return Ed25519PrivateKey.from_private_bytes(seed)
    except ValueError as e:
        raise FormatError("invalid Ed25519 seed", field=field) from e


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_seed(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def ed25519_verify(public: Ed25519PublicKey, msg: bytes, sig: bytes, *, what: str) -> None:
    """Verify an Ed25519 signature; every failure is a SignatureError."""
    if len(sig) != ED25519_SIGNATURE_SIZE:
        raise SignatureError(f"{what}: invalid signature (not 64 bytes)")
    try:
        public.verify(sig, msg)
    except InvalidSignature as e:
        raise SignatureError(f"{what}: invalid signature") from e


class NoteVerifier(Protocol):
    """Anything :func:`open_note` can check a signature with (log keys and witness keys alike)."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def verify(self, msg: bytes, sig: bytes) -> None:
        """Raise SignatureError unless ``sig`` (the bytes after the key ID) signs ``msg``."""
        ...


class PublicKey:
    """An Ed25519 public key under a signed-note key name: the part that note verifiers (type 0x01,
    :class:`Verifier`) and witness cosignature verifiers (type 0x04,
    :class:`protocol.checkpoint.CosignatureVerifier`) share. Build with :meth:`from_vkey` or
    :meth:`from_public_key`; subclasses set :attr:`ALG` and add ``verify``.
    """

    #: the signature type byte that goes into the key ID and the vkey
    ALG: ClassVar[int] = ALG_ED25519

    __slots__ = ("_key", "_key_id", "_name", "_public_key")

    def __init__(self, token: object, name: str, public_key: bytes) -> None:
        if token is not _CONSTRUCT:
            raise TypeError(f"use {type(self).__name__}.from_vkey() or .from_public_key()")
        self._name = _check_name(name)
        self._key = load_ed25519_public(public_key, field="public_key")
        self._public_key = public_key
        self._key_id = key_id(name, bytes([self.ALG]) + public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        """Parse ``name+hexkeyid+base64(ALG || pubkey)``; the key ID must match the key.

        A vkey of another signature type is refused: accepting it would silently give the key a
        key ID different from the one written in the string.
        """
        name, kid, public_key = parse_key_string(
            vkey, alg=cls.ALG, key_size=ED25519_PUBLIC_KEY_SIZE, private=False, field="vkey"
        )
        verifier = cls(_CONSTRUCT, name, public_key)
        if verifier.key_id != kid:
            raise FormatError("key ID does not match the key", field="vkey")
        return verifier

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> Self:
        """A key for a raw 32-byte Ed25519 public key (Go's NewEd25519VerifierKey)."""
        return cls(_CONSTRUCT, name, public_key)

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def vkey(self) -> str:
        return format_key_string(
            self._name, self._key_id, self.ALG, self._public_key, private=False
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, PublicKey)
        return (self._name, self._public_key) == (other._name, other._public_key)

    def __hash__(self) -> int:
        return hash((type(self), self._name, self._public_key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vkey()!r})"


class Verifier(PublicKey):
    """An Ed25519 note verifier (signature type 0x01). Build with :meth:`from_vkey`."""

    __slots__ = ()

    def verify(self, msg: bytes, sig: bytes) -> None:
        """Raise SignatureError unless ``sig`` is this key's Ed25519 signature of ``msg``."""
        ed25519_verify(self._key, msg, sig, what=f"key {self._name}+{self._key_id.hex()}")


class PrivateKey:
    """An Ed25519 private key under a signed-note key name: the part that note signers (type
    0x01, :class:`Signer`) and witness cosigners (type 0x04,
    :class:`protocol.checkpoint.CosignatureSigner`) share. Build with :meth:`generate` or
    :meth:`from_skey`; the seed never appears in ``repr``.
    """

    #: the signature type byte that goes into the key ID and the key strings
    ALG: ClassVar[int] = ALG_ED25519

    __slots__ = ("_key", "_key_id", "_name", "_public_key")

    def __init__(self, token: object, name: str, key: Ed25519PrivateKey) -> None:
        if token is not _CONSTRUCT:
            raise TypeError(f"use {type(self).__name__}.generate() or .from_skey()")
        self._name = _check_name(name)
        self._key = key
        self._public_key = raw_public(key)
        self._key_id = key_id(name, bytes([self.ALG]) + self._public_key)

    @classmethod
    def generate(cls, name: str) -> Self:
        return cls(_CONSTRUCT, _check_name(name), Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, skey: str) -> Self:
        """Parse ``PRIVATE+KEY+name+hexkeyid+base64(ALG || seed)``.

        The key ID names the *public* key, so it is checked after deriving that key (as Go does).
        """
        name, kid, seed = parse_key_string(
            skey, alg=cls.ALG, key_size=ED25519_SEED_SIZE, private=True, field="skey"
        )
        signer = cls(_CONSTRUCT, name, load_ed25519_seed(seed, field="skey"))
        if signer.key_id != kid:
            raise FormatError("key ID does not match the key", field="skey")
        return signer

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def skey(self) -> str:
        """The secret key string; whoever holds it can sign as this key."""
        return format_key_string(
            self._name, self._key_id, self.ALG, raw_seed(self._key), private=True
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, key_id={self._key_id.hex()!r})"


class Signer(PrivateKey):
    """An Ed25519 note signer (signature type 0x01). Build with :meth:`generate` or
    :meth:`from_skey`; the seed never appears in ``repr``."""

    __slots__ = ()

    def verifier(self) -> Verifier:
        return Verifier.from_public_key(self._name, self._public_key)

    def with_name(self, name: str) -> Signer:
        """The same key pair under another key name (and so another key ID).

        A hashfed node signs each of its logs under that log's origin, as tlog-checkpoint expects,
        with one Ed25519 key: partners pin one public key per node.
        """
        return Signer(_CONSTRUCT, _check_name(name), self._key)

    def sign(self, msg: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``msg`` (deterministic, RFC 8032)."""
        return self._key.sign(msg)


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: the key name, the 4-byte key ID and the signature bytes after it."""

    name: str
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.key_id, bytes) or len(self.key_id) != KEY_ID_SIZE:
            raise FormatError("key ID must be 4 bytes", field="key_id")
        # Go's note.Open wants at least 5 decoded bytes: the key ID and a non-empty signature.
        if not isinstance(self.signature, bytes) or not self.signature:
            raise FormatError("signature must be non-empty bytes", field="signature")

    def line(self) -> bytes:
        """The signature line, ``"— name base64(key ID || signature)\\n"``."""
        b64 = _b64encode(self.key_id + self.signature)
        return _SIG_PREFIX + f"{self.name} {b64}\n".encode()


@dataclass(frozen=True)
class Note:
    """A parsed note: the signed text (ending in a newline) and its signatures, in order."""

    text: bytes
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.text, bytes) or not self.text.endswith(b"\n"):
            raise FormatError("note text must end with a newline", field="text")
        if not isinstance(self.signatures, tuple) or not all(
            isinstance(s, NoteSignature) for s in self.signatures
        ):
            raise FormatError("signatures must be a tuple of NoteSignature", field="signatures")


def split_note(data: bytes) -> tuple[bytes, list[tuple[NoteSignature, bytes]]]:
    """Parse the grammar of a signed note; return the text and each signature with its raw line.

    The raw lines let callers copy signatures through byte for byte instead of re-encoding them.
    """
    if not isinstance(data, bytes):
        raise FormatError("note must be bytes", field="note")
    _check_note_chars(data, field="note")
    split = data.rfind(_SIG_SPLIT)
    if split < 0:
        raise FormatError("note has no blank line before its signatures", field="note")
    text, block = data[: split + 1], data[split + 2 :]
    if not block or not block.endswith(b"\n"):
        raise FormatError("note signature block must end with a newline", field="note")
    lines = block[:-1].split(b"\n")
    if len(lines) > MAX_SIGNATURES:
        raise FormatError(f"note has more than {MAX_SIGNATURES} signatures", field="note")
    sigs: list[tuple[NoteSignature, bytes]] = []
    for raw in lines:
        if not raw.startswith(_SIG_PREFIX):
            raise FormatError("signature line must start with an em dash and a space", field="note")
        name, _, b64 = raw[len(_SIG_PREFIX) :].decode("utf-8").partition(" ")
        if not is_valid_name(name):
            raise FormatError(f"invalid key name {name!r} in signature line", field="note")
        blob = _b64decode(b64, field="note")
        if len(blob) < KEY_ID_SIZE + 1:
            raise FormatError("signature is too short", field="note")
        sigs.append((NoteSignature(name, blob[:KEY_ID_SIZE], blob[KEY_ID_SIZE:]), raw + b"\n"))
    return text, sigs


def parse_note(data: bytes) -> Note:
    """Parse a signed note without verifying anything (grammar only); FormatError if malformed.

    Every signature line is returned in order, duplicates included.
    """
    text, sigs = split_note(data)
    return Note(text, tuple(sig for sig, _ in sigs))


def sign_note(text: bytes, *signers: Signer) -> bytes:
    """Sign ``text`` with each signer and return the complete note bytes.

    Refuses text that a verifier would reject (no final newline, not UTF-8, control characters),
    so that everything this returns opens with Go's ``note.Open``.
    """
    if not isinstance(text, bytes) or not text.endswith(b"\n"):
        raise FormatError("note text must end with a newline", field="text")
    _check_note_chars(text, field="text")
    if not signers:
        raise FormatError("a signed note needs at least one signer", field="signers")
    if len(signers) > MAX_SIGNATURES:
        raise FormatError(f"more than {MAX_SIGNATURES} signers", field="signers")
    lines = [NoteSignature(s.name, s.key_id, s.sign(text)).line() for s in signers]
    return text + b"\n" + b"".join(lines)


V = TypeVar("V", bound=NoteVerifier)


def _lookup(verifiers: Sequence[V]) -> dict[tuple[str, bytes], list[V]]:
    table: dict[tuple[str, bytes], list[V]] = {}
    for v in verifiers:
        bucket = table.setdefault((v.name, v.key_id), [])
        # The same key listed twice is harmless; two different keys behind one (name, key ID) is
        # ambiguous and reported only if a signature actually names it, as Go's VerifierList does.
        if v not in bucket:
            bucket.append(v)
    return table


def open_note(data: bytes, verifiers: Sequence[V]) -> tuple[Note, list[V]]:
    """Parse ``data`` and verify its signatures against the known ``verifiers``, like Go's Open.

    * signatures whose (name, key ID) matches no verifier are ignored;
    * the first signature from each known key must verify, else SignatureError; later signatures
      from a key that already verified are skipped (Go drops them unverified too);
    * if no known key signed, SignatureError.

    Returns the parsed note (all signatures) and the verifiers that signed, in note order.
    FormatError if the note is malformed, whatever its signatures.
    """
    note = parse_note(data)
    table = _lookup(verifiers)
    signed: list[V] = []
    seen: set[tuple[str, bytes]] = set()
    for sig in note.signatures:
        ident = (sig.name, sig.key_id)
        candidates = table.get(ident)
        if candidates is None:
            continue
        if len(candidates) > 1:
            raise SignatureError(f"ambiguous key {sig.name}+{sig.key_id.hex()}")
        if ident in seen:
            continue
        seen.add(ident)
        verifier = candidates[0]
        verifier.verify(note.text, sig.signature)
        signed.append(verifier)
    if not signed:
        raise SignatureError("note has no signature from a known key")
    return note, signed

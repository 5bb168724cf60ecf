"""RFC 9421 signatures on node-to-node requests: how a node signs one, and how another checks it.

Profile (SPEC.md, "Federation: authentication, membership and scope"):

* one signature, label ``hashfed``, in ``Signature-Input`` / ``Signature``;
* covered components ``("@method" "@target-uri")``, plus ``"content-digest"`` (RFC 9530,
  ``sha-256``) whenever the request has a body;
* parameters exactly ``created``, ``keyid``, ``alg="ed25519"`` and ``nonce`` (128 random bits as 32
  lowercase hex digits); ``keyid`` is ``<node vkey name>+<key ID hex>``, the signed-note name and
  key ID of the signing node's key, so a verifier finds the key the way it finds a note's key.

The library ``http_message_signatures`` builds the signature base and checks the signature; this
module adds what the profile requires around it (one label, the exact parameter set, the covered
components, a clock of our choosing) and turns every failure into :class:`node.errors.Unauthorized`
with a reason a partner's operator can act on. Replay (a nonce seen before) needs the database, so
the caller checks it with the returned :class:`SignedBy`.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

import http_sf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)

from node.errors import Unauthorized
from protocol.note import Signer, Verifier

__all__ = [
    "ALG",
    "CLOCK_SKEW",
    "LABEL",
    "MAX_AGE",
    "SignedBy",
    "format_keyid",
    "parse_keyid",
    "sign_request",
    "signature_keyid",
    "verify_request",
]

LABEL: Final = "hashfed"
ALG: Final = "ed25519"
#: seconds a signature stays acceptable after ``created``
MAX_AGE: Final = 300
#: seconds ``created`` may lie in the verifier's future (clocks disagree a little)
CLOCK_SKEW: Final = 60

_COVERED: Final = ("@method", "@target-uri")
_PARAMS: Final = frozenset({"created", "keyid", "alg", "nonce"})
_NONCE_RE: Final = re.compile(r"[0-9a-f]{32}", re.ASCII)
_KEYID_RE: Final = re.compile(r"([^\s+]{1,128})\+([0-9a-f]{8})", re.ASCII)


def format_keyid(signer: Signer | Verifier) -> str:
    """``<key name>+<key ID hex>`` of a node key, e.g. ``hashfed.partner.example+1a2b3c4d``."""
    return f"{signer.name}+{signer.key_id.hex()}"


def parse_keyid(keyid: str) -> tuple[str, bytes]:
    """(key name, 4-byte key ID) of a ``keyid``; Unauthorized if it is not in that form."""
    m = _KEYID_RE.fullmatch(keyid)
    if m is None:
        raise Unauthorized(
            f"malformed signature: keyid {keyid[:140]!r} is not '<key name>+<8 hex digits>'",
            field="Signature-Input",
        )
    return m.group(1), bytes.fromhex(m.group(2))


@dataclass(frozen=True)
class SignedBy:
    """Who signed a request that verified, and the parameters the caller needs for replay."""

    keyid: str
    key_name: str
    key_id: bytes
    created: int
    nonce: str


# -- the message object the library works on ----------------------------------------------------


class _Fields:
    """Header view for the library: every field line via ``items()``, writes to ``target``."""

    def __init__(
        self, source: Mapping[str, str], target: MutableMapping[str, str] | None = None
    ) -> None:
        self._source = source
        self._target = target

    def items(self) -> Iterable[tuple[str, str]]:
        return list(self._source.items())

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self.items()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n.lower() == name.lower() for n, _ in self.items())

    def __setitem__(self, name: str, value: str) -> None:
        if self._target is None:
            raise TypeError("read-only headers")
        self._target[name] = value

    def __delitem__(self, name: str) -> None:
        if self._target is None:
            raise TypeError("read-only headers")
        del self._target[name]


@dataclass
class _Request:
    method: str
    url: str
    headers: _Fields


# -- signing ---------------------------------------------------------------------------------------


def sign_request(
    method: str,
    url: str,
    headers: MutableMapping[str, str],
    body: bytes | None,
    signer: Signer,
    *,
    now: int | None = None,
    nonce: str | None = None,
) -> None:
    """Add ``Signature-Input`` and ``Signature`` (and ``Content-Digest`` with a body) to headers.

    ``signer`` is the node key (its name is the node's origin). ``url`` must be the absolute URL
    exactly as it will be sent (scheme, host, port, path and query): it is ``@target-uri``.
    """
    created = int(time.time()) if now is None else now
    message = _Request(method.upper(), url, _Fields(headers, headers))
    lib = HTTPMessageSigner(signature_algorithm=algorithms.ED25519)
    try:
        prepared = lib.prepare(
            message,
            key_id=format_keyid(signer),
            created=datetime.datetime.fromtimestamp(created, tz=datetime.UTC),
            nonce=os.urandom(16).hex() if nonce is None else nonce,
            label=LABEL,
            include_alg=True,
            covered_component_ids=_COVERED,
            body=body,
            # re-signing a request that already carries a digest checks it against the body
            use_existing_digest=body is not None and any(
                k.lower() == "content-digest" for k in headers
            ),
        )
        # Our Signer never hands out its private key: sign the base ourselves (the library's
        # "external signer" path), deterministic Ed25519 as RFC 9421 section 3.3.6 requires.
        lib.apply(message, prepared, signer.sign(prepared.signature_base))
    except HTTPMessageSignaturesException as e:
        raise ValueError(f"cannot sign {method} {url}: {e}") from e


# -- verification ---------------------------------------------------------------------------------


class _LibVerifier(HTTPMessageVerifier):
    """The library's verifier without its own clock: :func:`verify_request` checks ``created``
    against the caller's ``now`` (tests and replays need a clock they choose)."""

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        return None


class _OneKey(HTTPSignatureKeyResolver):
    def __init__(self, keyid: str, key: Ed25519PublicKey) -> None:
        self._keyid = keyid
        self._key = key

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:
        return self._key if key_id == self._keyid else None

    def resolve_private_key(self, key_id: str) -> Any:
        raise KeyError(key_id)


def _reject_duplicate(key: str, context: str) -> None:
    raise ValueError(f"duplicate {context} key {key!r}")


def _field(headers: Mapping[str, str], name: str) -> str | None:
    values = [v for k, v in headers.items() if k.lower() == name]
    return ", ".join(v.strip(" \t") for v in values) if values else None


def _dictionary(value: str, name: str) -> dict[str, Any]:
    try:
        parsed = http_sf.parse(
            value.encode("ascii"), tltype="dictionary", on_duplicate_key=_reject_duplicate
        )
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        raise Unauthorized(f"malformed signature: {name} is not a structured dictionary",
                           field=name) from e
    if not isinstance(parsed, dict):
        raise Unauthorized(f"malformed signature: {name} is not a dictionary", field=name)
    return parsed


def _param(params: Mapping[str, Any], name: str, kind: type) -> Any:
    value = params.get(name)
    if value is None:
        raise Unauthorized(f"malformed signature: the {name!r} parameter is missing",
                           field="Signature-Input")
    if type(value) is not kind:
        raise Unauthorized(f"malformed signature: the {name!r} parameter has the wrong type",
                           field="Signature-Input")
    return value


def verify_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    resolve: Callable[[str, bytes], Verifier | None],
    *,
    now: int | None = None,
    max_age: int = MAX_AGE,
) -> SignedBy:
    """Check a request's ``hashfed`` signature; who signed it, or Unauthorized saying why.

    ``url`` is the target URI as this node was addressed (its public base URL + the raw path
    and query). ``body`` is the request content, or None when there is none. ``resolve(key name,
    key ID)`` returns the verifier of a key this node accepts now, or None. Order of the checks:
    presence, syntax, parameters and their values, freshness, covered components, known key,
    signature, content digest. The nonce is returned unchecked: replay needs shared state.
    """
    clock = int(time.time()) if now is None else now
    sig_input_value = _field(headers, "signature-input")
    sig_value = _field(headers, "signature")
    if sig_input_value is None or sig_value is None:
        raise Unauthorized("the request is not signed (no Signature-Input and Signature headers)")
    sig_inputs = _dictionary(sig_input_value, "Signature-Input")
    sigs = _dictionary(sig_value, "Signature")
    if set(sig_inputs) != {LABEL} or set(sigs) != {LABEL}:
        raise Unauthorized(
            f"malformed signature: expected exactly one signature labelled {LABEL!r}",
            field="Signature-Input",
        )
    members, params = sig_inputs[LABEL]
    if not isinstance(members, list):
        raise Unauthorized("malformed signature: Signature-Input must be an inner list",
                           field="Signature-Input")
    signature, _ = sigs[LABEL]
    if not isinstance(signature, bytes):
        raise Unauthorized("malformed signature: Signature must be a byte sequence",
                           field="Signature")
    unexpected = sorted(set(params) - _PARAMS)
    if unexpected:
        raise Unauthorized(f"malformed signature: unexpected parameter {unexpected[0]!r}",
                           field="Signature-Input")
    alg = _param(params, "alg", str)
    if alg != ALG:
        raise Unauthorized(f"unsupported signature algorithm {alg!r}: hashfed uses {ALG!r}",
                           field="Signature-Input")
    keyid = _param(params, "keyid", str)
    key_name, key_id = parse_keyid(keyid)
    created = _param(params, "created", int)
    nonce = params.get("nonce")
    if nonce is None:
        raise Unauthorized("the signature has no nonce", field="Signature-Input")
    if not isinstance(nonce, str) or _NONCE_RE.fullmatch(nonce) is None:
        raise Unauthorized("malformed signature: nonce must be 32 lowercase hex digits",
                           field="Signature-Input")
    if created < clock - max_age:
        raise Unauthorized(
            f"the signature is stale: created {clock - created} s ago (limit {max_age} s)",
            field="Signature-Input",
        )
    if created > clock + CLOCK_SKEW:
        raise Unauthorized(
            f"the signature was created {created - clock} s in the future (limit {CLOCK_SKEW} s);"
            " check the signer's clock",
            field="Signature-Input",
        )
    covered = []
    for item, item_params in members:
        if not isinstance(item, str) or item_params:
            raise Unauthorized("malformed signature: covered components must be plain names",
                               field="Signature-Input")
        covered.append(item)
    missing = [c for c in _COVERED if c not in covered]
    if body:
        missing += [] if "content-digest" in covered else ["content-digest"]
    if missing:
        raise Unauthorized(
            f"the signature does not cover {', '.join(missing)}", field="Signature-Input"
        )
    if body and _field(headers, "content-digest") is None:
        raise Unauthorized("the request has a body but no Content-Digest header",
                           field="Content-Digest")

    verifier = resolve(key_name, key_id)
    if verifier is None:
        raise Unauthorized(f"unknown key {keyid}: not a current key of an authorised partner")
    public = Ed25519PublicKey.from_public_bytes(verifier.public_key)
    lib = _LibVerifier(signature_algorithm=algorithms.ED25519, key_resolver=_OneKey(keyid, public))
    message = _Request(method.upper(), url, _Fields(headers))
    try:
        results = lib.verify(message, max_age=None, expect_label=None)
    except HTTPMessageSignaturesException as e:
        raise Unauthorized(f"bad signature from {keyid}: {_reason(e)}") from e
    if body is not None:
        try:
            lib.verify_body(message, results, body)
        except HTTPMessageSignaturesException as e:
            raise Unauthorized(
                f"content-digest mismatch: {_reason(e)}", field="Content-Digest"
            ) from e
    return SignedBy(keyid=keyid, key_name=key_name, key_id=key_id, created=created, nonce=nonce)


def signature_keyid(headers: Mapping[str, str]) -> tuple[str, bytes] | None:
    """(key name, key ID) the ``hashfed`` signature names, or None when the request is unsigned.

    A peek, so that a caller can look the key up (asynchronously) before :func:`verify_request`;
    Unauthorized if the headers are malformed. Nothing here is verified yet.
    """
    value = _field(headers, "signature-input")
    if value is None:
        return None
    member = _dictionary(value, "Signature-Input").get(LABEL)
    if member is None:
        raise Unauthorized(f"malformed signature: no signature labelled {LABEL!r}",
                           field="Signature-Input")
    keyid = member[1].get("keyid")
    if not isinstance(keyid, str):
        raise Unauthorized("malformed signature: the 'keyid' parameter is missing",
                           field="Signature-Input")
    return parse_keyid(keyid)


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    # cryptography's InvalidSignature has no message: say what it means.
    return "the signature does not verify" if text in ("", "InvalidSignature") else text

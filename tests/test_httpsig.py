"""RFC 9421 request signatures (node.federation.httpsig): the RFC's Ed25519 vector, our profile,
and one test per reason a signature is refused."""

from __future__ import annotations

import base64
import datetime
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from http_message_signatures import HTTPMessageSigner, algorithms

from node.errors import Unauthorized
from node.federation import httpsig
from protocol.note import Signer, Verifier

VECTORS = Path(__file__).parent / "vectors" / "rfc9421"
URL = "https://node-a.test/v1/sets/amber/tile/0/000?x=1"
NOW = 1_800_000_000


def _rfc_request() -> tuple[str, str, dict[str, str], bytes]:
    raw = (VECTORS / "test-request.http").read_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    start, *lines = head.decode("ascii").split("\r\n")
    method, target, _ = start.split(" ")
    headers = dict(line.split(": ", 1) for line in lines)
    return method, f"https://{headers['Host']}{target}", headers, body


def test_rfc9421_b26_signature_base_and_signature() -> None:
    """The library's signature base, fed our message adapter, is the RFC's byte for byte, and
    the RFC's key signs it to the RFC's signature (Ed25519 is deterministic)."""
    method, url, headers, _ = _rfc_request()
    message = httpsig._Request(method, url, httpsig._Fields(headers))
    prepared = HTTPMessageSigner(signature_algorithm=algorithms.ED25519).prepare(
        message,
        key_id="test-key-ed25519",
        created=datetime.datetime.fromtimestamp(1618884473, tz=datetime.UTC),
        include_alg=False,
        label="sig-b26",
        covered_component_ids=(
            "date", "@method", "@path", "@authority", "content-type", "content-length",
        ),
        use_existing_digest=True,
    )
    assert prepared.signature_base == (VECTORS / "b26-signature-base.txt").read_bytes()
    assert "sig-b26=" + prepared.signature_params == (
        (VECTORS / "b26-signature-input.txt").read_text().strip()
    )
    pem = (VECTORS / "test-key-ed25519.pem").read_bytes()
    key = load_pem_private_key(pem[pem.index(b"-----BEGIN PRIVATE KEY") :], None)
    assert isinstance(key, Ed25519PrivateKey)
    expected = (VECTORS / "b26-signature.txt").read_text().strip()
    assert f"sig-b26=:{base64.b64encode(key.sign(prepared.signature_base)).decode()}:" == expected


@pytest.fixture
def signer() -> Signer:
    return Signer.generate("node-b.test")


def _resolver(*verifiers: Verifier) -> Callable[[str, bytes], Verifier | None]:
    table = {(v.name, v.key_id): v for v in verifiers}
    return lambda name, kid: table.get((name, kid))


def _sign(signer: Signer, body: bytes | None = None, *, method: str = "GET", url: str = URL,
          now: int = NOW, nonce: str | None = None) -> dict[str, str]:
    headers: dict[str, str] = {}
    httpsig.sign_request(method, url, headers, body, signer, now=now, nonce=nonce)
    return headers


def _verify(headers: dict[str, str], signer: Signer, body: bytes | None = None, *,
            method: str = "GET", url: str = URL, now: int = NOW) -> httpsig.SignedBy:
    return httpsig.verify_request(method, url, headers, body, _resolver(signer.verifier()),
                                  now=now)


def test_profile_of_a_signed_get(signer: Signer) -> None:
    headers = _sign(signer, nonce="0" * 32)
    kid = signer.key_id.hex()
    assert headers == {
        "Signature-Input": f'hashfed=("@method" "@target-uri");created={NOW};'
        f'keyid="node-b.test+{kid}";alg="ed25519";nonce="{"0" * 32}"',
        "Signature": headers["Signature"],
    }
    signed = _verify(headers, signer)
    assert signed == httpsig.SignedBy(f"node-b.test+{kid}", "node-b.test", signer.key_id, NOW,
                                      "0" * 32)
    assert httpsig.signature_keyid(headers) == ("node-b.test", signer.key_id)
    assert httpsig.signature_keyid({}) is None


def test_body_is_covered_by_content_digest(signer: Signer) -> None:
    body = b'{"publish": []}'
    headers = _sign(signer, body, method="POST")
    assert headers["Content-Digest"].startswith("sha-256=:")
    assert '"content-digest"' in headers["Signature-Input"]
    _verify(headers, signer, body, method="POST")


def test_nonces_are_random(signer: Signer) -> None:
    a, b = _verify(_sign(signer), signer), _verify(_sign(signer), signer)
    assert a.nonce != b.nonce and len(a.nonce) == 32


def _refused(match: str, headers: dict[str, str], signer: Signer, body: bytes | None = None,
             **kw: object) -> None:
    with pytest.raises(Unauthorized, match=match):
        _verify(headers, signer, body, **kw)  # type: ignore[arg-type]


def test_unsigned(signer: Signer) -> None:
    _refused("not signed", {}, signer)
    _refused("not signed", {"Signature": "hashfed=:AAAA:"}, signer)


def test_malformed(signer: Signer) -> None:
    good = _sign(signer)
    _refused("malformed", {**good, "Signature-Input": "hashfed=(((("}, signer)
    _refused("malformed", {**good, "Signature": "other=:AAAA:"}, signer)
    _refused("keyid", {**good, "Signature-Input": good["Signature-Input"].replace(
        f"+{signer.key_id.hex()}", "")}, signer)
    _refused("unexpected parameter 'tag'",
             {**good, "Signature-Input": good["Signature-Input"] + ';tag="x"'}, signer)
    _refused("'created' parameter is missing", {**good, "Signature-Input": good[
        "Signature-Input"].replace(f"created={NOW};", "")}, signer)


def test_two_signatures_are_refused(signer: Signer) -> None:
    good = _sign(signer)
    two = {
        "Signature-Input": good["Signature-Input"] + ", " + good["Signature-Input"].replace(
            "hashfed=", "other="),
        "Signature": good["Signature"] + ", " + good["Signature"].replace("hashfed=", "other="),
    }
    _refused("exactly one signature", two, signer)


def test_wrong_alg(signer: Signer) -> None:
    good = _sign(signer)
    bad = good["Signature-Input"].replace('alg="ed25519"', 'alg="hmac-sha256"')
    _refused("unsupported signature algorithm", {**good, "Signature-Input": bad}, signer)


def test_missing_nonce(signer: Signer) -> None:
    headers: dict[str, str] = {}
    message = httpsig._Request("GET", URL, httpsig._Fields(headers, headers))
    lib = HTTPMessageSigner(signature_algorithm=algorithms.ED25519)
    prepared = lib.prepare(
        message, key_id=httpsig.format_keyid(signer), label="hashfed",
        created=datetime.datetime.fromtimestamp(NOW, tz=datetime.UTC),
        covered_component_ids=("@method", "@target-uri"),
    )
    lib.apply(message, prepared, signer.sign(prepared.signature_base))
    _refused("no nonce", headers, signer)


def test_stale_and_future(signer: Signer) -> None:
    _refused("stale", _sign(signer, now=NOW - httpsig.MAX_AGE - 1), signer)
    _verify(_sign(signer, now=NOW - httpsig.MAX_AGE), signer)
    _refused("future", _sign(signer, now=NOW + httpsig.CLOCK_SKEW + 1), signer)
    _verify(_sign(signer, now=NOW + httpsig.CLOCK_SKEW), signer)


def test_unknown_key(signer: Signer) -> None:
    other = Signer.generate("node-b.test")  # same name, another key: another key ID
    _refused("unknown key", _sign(other), signer)


def test_bad_signature(signer: Signer) -> None:
    good = _sign(signer)
    sig = base64.b64decode(good["Signature"].split(":")[1])
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    _refused("bad signature",
             {**good, "Signature": f"hashfed=:{base64.b64encode(forged).decode()}:"}, signer)


def test_signature_by_another_key_under_our_keyid(signer: Signer) -> None:
    impostor = Signer.generate("node-c.test")
    headers = _sign(impostor)
    headers["Signature-Input"] = headers["Signature-Input"].replace(
        httpsig.format_keyid(impostor), httpsig.format_keyid(signer))
    _refused("bad signature", headers, signer)


def test_request_changed_after_signing(signer: Signer) -> None:
    headers = _sign(signer)
    _refused("bad signature", headers, signer, url=URL.replace("amber", "red"))
    _refused("bad signature", headers, signer, method="DELETE")


def test_tampered_body_and_digest(signer: Signer) -> None:
    body = b'{"a": 1}'
    headers = _sign(signer, body, method="POST")
    _refused("content-digest mismatch", headers, signer, b'{"a": 2}', method="POST")
    tampered = {**headers, "Content-Digest": "sha-256=:" + base64.b64encode(bytes(32)).decode()
                + ":"}
    _refused("bad signature", tampered, signer, body, method="POST")
    no_digest = {k: v for k, v in headers.items() if k != "Content-Digest"}
    _refused("no Content-Digest", no_digest, signer, body, method="POST")


def test_body_without_covered_digest(signer: Signer) -> None:
    headers = _sign(signer)  # signed as a GET without a body
    _refused("does not cover content-digest", headers, signer, b"smuggled")


def test_real_clock_default(signer: Signer) -> None:
    headers: dict[str, str] = {}
    httpsig.sign_request("GET", URL, headers, None, signer)
    signed = httpsig.verify_request("GET", URL, headers, None, _resolver(signer.verifier()))
    assert abs(signed.created - time.time()) < 5

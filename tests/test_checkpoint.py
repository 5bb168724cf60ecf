"""Tests for protocol.checkpoint: tlog-checkpoint grammar, signing, cosignature/v1 and quorums."""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import merkle
from protocol.checkpoint import (
    MAX_TIMESTAMP,
    Checkpoint,
    CosignatureSigner,
    CosignatureVerifier,
    add_cosignatures,
    cosignature_timestamp,
    cosignatures,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from protocol.errors import FormatError, SignatureError
from protocol.note import (
    MAX_SIGNATURES,
    NoteSignature,
    Signer,
    Verifier,
    open_note,
    parse_note,
    sign_note,
)

VECTORS = Path(__file__).parent / "vectors" / "note"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


C2SP = load("c2sp-examples.json")
TDW = load("transparency-dev-witness.json")
TDF = load("transparency-dev-formats.json")
TP = load("third-party-cosignature.json")

ORIGIN = "example.com/log"


def b(s: str) -> bytes:
    return s.encode("utf-8")


@cache
def _log_signer(name: str) -> Signer:
    return Signer.generate(name)


def log_signer(name: str = ORIGIN) -> Signer:
    # One key per name for the whole module (cache keys differ for default vs explicit args).
    return _log_signer(name)


@cache
def witness(name: str) -> CosignatureSigner:
    return CosignatureSigner.generate(name)


def checkpoint(size: int = 10, origin: str = ORIGIN) -> Checkpoint:
    return Checkpoint(origin, size, bytes(range(32)))


def cosigned(cp: Checkpoint, *names: str, ts: int = 1_700_000_000) -> bytes:
    note = sign_checkpoint(cp, log_signer(cp.origin))
    return add_cosignatures(note, [witness(n).cosign(cp.text(), ts) for n in names])


# --- grammar ---------------------------------------------------------------------------------


def test_text_format() -> None:
    cp = Checkpoint("example.com/behind-the-sofa", 20852163, b"\x0a" * 32, ("ext one", "ext2"))
    root = base64.b64encode(b"\x0a" * 32).decode()
    assert cp.text() == b(f"example.com/behind-the-sofa\n20852163\n{root}\next one\next2\n")


def test_c2sp_checkpoint_example() -> None:
    note = parse_note(b(C2SP["checkpoint"]))
    cp = parse_checkpoint(note.text)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert cp.text() == note.text
    assert note.signatures[0].name == cp.origin  # the log's key name is its origin


def test_c2sp_cosignature_example_timestamp_and_message() -> None:
    note = parse_note(b(C2SP["cosigned_checkpoint"]))
    log_sig, wit_sig = note.signatures
    assert wit_sig.name == "witness.example.com/w1"
    assert cosignature_timestamp(wit_sig) == C2SP["cosignature_timestamp"] == 1679315147
    with pytest.raises(FormatError):
        cosignature_timestamp(log_sig)  # a plain Ed25519 signature has no timestamp
    # The spec's example of the signed message is what we sign for that timestamp and text.
    signer = CosignatureSigner.generate("witness.example.com/w1")
    sig = signer.cosign(note.text, 1679315147)
    message = b(C2SP["cosignature_v1_message"])
    signer.verifier().verify(note.text, sig.signature)
    # Checked independently of our verifier: the Ed25519 signature is over the spec's message.
    public = Ed25519PublicKey.from_public_bytes(signer.verifier().public_key)
    public.verify(sig.signature[8:], message)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"origin\n5\n",  # too few lines
        b"origin\n5\n" + base64.b64encode(bytes(32)),  # no final newline
        b"\n5\n" + base64.b64encode(bytes(32)) + b"\n",  # empty origin
        b"origin\n05\n" + base64.b64encode(bytes(32)) + b"\n",  # leading zero
        b"origin\n+5\n" + base64.b64encode(bytes(32)) + b"\n",
        b"origin\n-5\n" + base64.b64encode(bytes(32)) + b"\n",
        b"origin\n 5\n" + base64.b64encode(bytes(32)) + b"\n",
        b"origin\n5_0\n" + base64.b64encode(bytes(32)) + b"\n",
        b"origin\n\xd9\xa5\n" + base64.b64encode(bytes(32)) + b"\n",  # Arabic-Indic digit five
        b"origin\n9223372036854775808\n" + base64.b64encode(bytes(32)) + b"\n",  # 2^63
        b"origin\nbananas\n" + base64.b64encode(bytes(32)) + b"\n",
        b"origin\n5\n" + base64.b64encode(bytes(31)) + b"\n",  # short hash
        b"origin\n5\n" + base64.b64encode(bytes(33)) + b"\n",
        b"origin\n5\nThisIsn'tBase64\n",
        b"origin\n5\n" + base64.b64encode(bytes(32)).rstrip(b"=") + b"\n",  # unpadded
        b"origin\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n",  # non-canonical bits
        b"origin\n5\n" + base64.b64encode(bytes(32)) + b"\n\n",  # empty extension line
        b"origin\n5\n" + base64.b64encode(bytes(32)) + b"\next\n\n",
        b"origin\n5\n" + base64.b64encode(bytes(32)) + b"\next",  # unterminated extension
        b"ori\tgin\n5\n" + base64.b64encode(bytes(32)) + b"\n",  # control character
        b"\xff\n5\n" + base64.b64encode(bytes(32)) + b"\n",  # not UTF-8
    ],
)
def test_parse_checkpoint_rejects(text: bytes) -> None:
    with pytest.raises(FormatError):
        parse_checkpoint(text)


def test_parse_checkpoint_limits() -> None:
    root = base64.b64encode(bytes(32))
    empty = base64.b64encode(merkle.EMPTY_ROOT)
    assert parse_checkpoint(b"o\n0\n" + empty + b"\n").size == 0
    # size 0 with any other root claims a tree that cannot exist
    with pytest.raises(FormatError, match="empty-tree root"):
        parse_checkpoint(b"o\n0\n" + root + b"\n")
    big = parse_checkpoint(b"o\n9223372036854775807\n" + root + b"\n")
    assert big.size == 2**63 - 1
    # Origins may contain spaces and "+" (only RECOMMENDED against); they are not key names.
    assert parse_checkpoint(b"Log Checkpoint v0\n1\n" + root + b"\n").origin == "Log Checkpoint v0"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": ""},
        {"origin": "a\nb"},
        {"size": -1},
        {"size": 2**63},
        {"size": True},
        {"size": 1.0},
        {"root_hash": bytes(31)},
        {"root_hash": "00" * 32},
        {"extensions": ("",)},
        {"extensions": ("a\nb",)},
        {"extensions": ["a"]},
    ],
)
def test_checkpoint_validates_fields(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"origin": "o", "size": 1, "root_hash": bytes(32)} | kwargs
    with pytest.raises(FormatError):
        Checkpoint(**fields)


_line = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30)
_checkpoints = st.builds(
    Checkpoint,
    origin=_line,
    size=st.integers(min_value=1, max_value=2**63 - 1),
    root_hash=st.binary(min_size=32, max_size=32),
    extensions=st.lists(_line, max_size=3).map(tuple),
) | st.builds(  # the empty tree has exactly one root
    Checkpoint, origin=_line, size=st.just(0), root_hash=st.just(merkle.EMPTY_ROOT)
)


@settings(max_examples=200, deadline=None)
@given(cp=_checkpoints)
def test_checkpoint_round_trip(cp: Checkpoint) -> None:
    assert parse_checkpoint(cp.text()) == cp


@settings(max_examples=200, deadline=None)
@given(text=st.binary(max_size=120))
def test_parse_checkpoint_is_strict_inverse(text: bytes) -> None:
    try:
        cp = parse_checkpoint(text)
    except FormatError:
        return
    assert cp.text() == text


# --- published vectors -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mInit", "mNext"])
def test_transparency_dev_checkpoint_verifies(name: str) -> None:
    data = b(TDW["notes_origin_is_key_name"][name])
    monkeys = Verifier.from_vkey(TDW["monkeys_vkey"])
    cp = verify_checkpoint(data, monkeys, origin="monkeys")
    assert cp.origin == "monkeys"
    assert cp.size == {"mInit": 5, "mNext": 8}[name]
    assert sign_checkpoint(cp, Signer.from_skey(TDW["monkeys_skey"])) == data


@pytest.mark.parametrize("name", ["mInit", "mNext", "frog"])
def test_transparency_dev_origin_not_key_name_is_rejected(name: str) -> None:
    # Signed by "monkeys" but the origin line is "Log Checkpoint v0": fine as a note, not as a
    # checkpoint of the monkeys log.
    data = b(TDW["notes_origin_differs_from_key_name"][name])
    monkeys = Verifier.from_vkey(TDW["monkeys_vkey"])
    open_note(data, [monkeys])
    with pytest.raises(SignatureError, match="origin"):
        verify_checkpoint(data, monkeys)


def test_third_party_cosigned_checkpoint() -> None:
    note = b(TP["text"] + "\n" + TP["log_sig_line"] + TP["witness_sig_line"])
    log = Verifier.from_vkey(TP["log_vkey"])
    wit = CosignatureVerifier.from_vkey(TP["witness_vkey"])
    assert wit.key_id == bytes.fromhex(TP["witness_key_id"])
    assert wit.vkey() == TP["witness_vkey"]
    cp = verify_checkpoint(note, log, origin="example.com/vector-log", witnesses=[wit], quorum=1)
    assert cp.size == 1234
    assert cosignatures(note, [wit]) == {"witness.example.com/vector": TP["timestamp"]}


def test_third_party_signatures_reproduced_byte_for_byte() -> None:
    text = b(TP["text"])
    log_signer_ = Signer.from_skey(TP["log_skey"])
    assert log_signer_.verifier().vkey() == TP["log_vkey"]
    signed = sign_checkpoint(parse_checkpoint(text), log_signer_)
    assert signed == text + b"\n" + b(TP["log_sig_line"])
    wit_signer = CosignatureSigner.from_skey(TP["witness_skey"])
    assert wit_signer.skey() == TP["witness_skey"]
    assert wit_signer.verifier().vkey() == TP["witness_vkey"]
    assert wit_signer.cosign(text, TP["timestamp"]).line() == b(TP["witness_sig_line"])


def test_transparency_dev_formats_cosignature_vkeys() -> None:
    for vkey in TDF["cosignature_vkeys_valid"]:
        assert CosignatureVerifier.from_vkey(vkey).vkey() == vkey
    # formats converts a plain Ed25519 vkey into a cosigner key; we refuse it (see SOURCE.md).
    with pytest.raises(FormatError):
        CosignatureVerifier.from_vkey(TDF["ed25519_vkey_alg_0x01"])
    for vkey in TDF["vkeys_invalid"].values():
        with pytest.raises(FormatError):
            CosignatureVerifier.from_vkey(vkey)


def test_transparency_dev_formats_cosignature_timestamp() -> None:
    blob = base64.b64decode(TDF["cosignature_timestamp"]["base64"])
    sig = NoteSignature("w", blob[:4], blob[4:])
    assert cosignature_timestamp(sig) == TDF["cosignature_timestamp"]["timestamp"]
    blob = base64.b64decode(TDF["not_a_cosignature_base64"])
    with pytest.raises(FormatError):
        cosignature_timestamp(NoteSignature("w", blob[:4], blob[4:]))


# --- signing, cosigning, verification --------------------------------------------------------


def test_sign_and_verify_with_quorum() -> None:
    cp = checkpoint()
    note = cosigned(cp, "w1.example", "w2.example", "w3.example")
    log = log_signer().verifier()
    wits = [witness(n).verifier() for n in ("w1.example", "w2.example", "w3.example")]
    assert verify_checkpoint(note, log, witnesses=wits, quorum=3) == cp
    assert verify_checkpoint(note, log) == cp  # witnesses are optional
    names = ("w1.example", "w2.example", "w3.example")
    assert cosignatures(note, wits) == dict.fromkeys(names, 1_700_000_000)


def test_quorum_not_met() -> None:
    cp = checkpoint()
    note = cosigned(cp, "w1.example")
    log = log_signer().verifier()
    wits = [witness(n).verifier() for n in ("w1.example", "w2.example")]
    verify_checkpoint(note, log, witnesses=wits, quorum=1)
    with pytest.raises(SignatureError, match="quorum"):
        verify_checkpoint(note, log, witnesses=wits, quorum=2)


def test_quorum_counts_distinct_witnesses() -> None:
    # The same witness cosigning twice (two timestamps) counts once.
    cp = checkpoint()
    note = sign_checkpoint(cp, log_signer())
    w = witness("w1.example")
    note = add_cosignatures(note, [w.cosign(cp.text(), 1), w.cosign(cp.text(), 2)])
    assert len(parse_note(note).signatures) == 3
    with pytest.raises(SignatureError, match="quorum"):
        verify_checkpoint(note, log_signer().verifier(), witnesses=[w.verifier()], quorum=2)


def test_unknown_witness_does_not_count() -> None:
    cp = checkpoint()
    note = cosigned(cp, "stranger.example")
    log = log_signer().verifier()
    known = [witness("w1.example").verifier()]
    verify_checkpoint(note, log, witnesses=known)
    with pytest.raises(SignatureError, match="quorum"):
        verify_checkpoint(note, log, witnesses=known, quorum=1)
    assert cosignatures(note, known) == {}
    # A key with a known witness's name but another key is still unknown.
    impostor = CosignatureSigner.generate("w1.example")
    note = add_cosignatures(sign_checkpoint(cp, log_signer()), [impostor.cosign(cp.text(), 5)])
    with pytest.raises(SignatureError, match="quorum"):
        verify_checkpoint(note, log, witnesses=known, quorum=1)


def test_bad_cosignature_from_known_witness_rejects_note() -> None:
    cp = checkpoint()
    w = witness("w1.example")
    good = w.cosign(cp.text(), 100)
    forged = NoteSignature(good.name, good.key_id, (101).to_bytes(8, "big") + good.signature[8:])
    note = add_cosignatures(sign_checkpoint(cp, log_signer()), [forged])
    log = log_signer().verifier()
    with pytest.raises(SignatureError):
        verify_checkpoint(note, log, witnesses=[w.verifier()])
    verify_checkpoint(note, log)  # an unknown-to-us witness line is ignored
    assert cosignatures(note, [w.verifier()]) == {}
    with pytest.raises(SignatureError):
        w.verifier().verify_cosignature(cp.text(), forged)


def test_wrong_origin() -> None:
    cp = checkpoint()
    note = sign_checkpoint(cp, log_signer())
    log = log_signer().verifier()
    with pytest.raises(SignatureError, match="origin"):
        verify_checkpoint(note, log, origin="example.com/other")
    # A log key named differently from the origin line cannot vouch for that origin.
    other_log = log_signer("example.com/other")
    with pytest.raises(FormatError):
        sign_checkpoint(cp, other_log)
    mislabelled = sign_note(cp.text(), other_log)
    with pytest.raises(SignatureError, match="origin"):
        verify_checkpoint(mislabelled, other_log.verifier())


def test_not_signed_by_log() -> None:
    cp = checkpoint()
    note = cosigned(cp, "w1.example")
    other = log_signer("example.com/other").verifier()
    with pytest.raises(SignatureError):
        verify_checkpoint(note, other)
    # Signed only by a witness: the witness is known, the log is not in the signed set.
    w = witness("w1.example")
    text = cp.text()
    only_witness = text + b"\n" + w.cosign(text, 1).line()
    with pytest.raises(SignatureError, match="not signed by the log"):
        verify_checkpoint(only_witness, log_signer().verifier(), witnesses=[w.verifier()])


def test_tampered_checkpoint() -> None:
    cp = checkpoint(size=10)
    note = cosigned(cp, "w1.example")
    tampered = note.replace(b"\n10\n", b"\n11\n", 1)
    with pytest.raises(SignatureError):
        verify_checkpoint(tampered, log_signer().verifier())
    with pytest.raises(SignatureError):
        witness("w1.example").verifier().verify_cosignature(
            parse_note(tampered).text, parse_note(tampered).signatures[1]
        )


def test_malformed_checkpoint_text_under_valid_signature() -> None:
    note = sign_note(b"example.com/log\nnot-a-size\nnot-a-hash\n", log_signer())
    with pytest.raises(FormatError):
        verify_checkpoint(note, log_signer().verifier())


def test_cosignature_covers_extension_lines() -> None:
    cp = Checkpoint(ORIGIN, 3, bytes(32), ("ext-a",))
    note = cosigned(cp, "w1.example")
    changed = note.replace(b"ext-a", b"ext-b")
    assert cosignatures(changed, [witness("w1.example").verifier()]) == {}


def test_cosigner_rejections() -> None:
    w = witness("w1.example")
    text = checkpoint().text()
    for ts in (-1, MAX_TIMESTAMP + 1, True, 1.5):
        with pytest.raises(FormatError):
            w.cosign(text, ts)  # type: ignore[arg-type]
    assert cosignature_timestamp(w.cosign(text, MAX_TIMESTAMP)) == MAX_TIMESTAMP
    with pytest.raises(FormatError):
        w.cosign(b"not a checkpoint\n", 1)
    # A timestamp over 2^63-1 is refused even if signed (it cannot come from a valid cosigner).
    sig = w.cosign(text, 1)
    over = NoteSignature(sig.name, sig.key_id, (2**63).to_bytes(8, "big") + sig.signature[8:])
    with pytest.raises(FormatError):
        cosignature_timestamp(over)
    with pytest.raises(SignatureError):
        w.verifier().verify_cosignature(text, over)


def test_verify_cosignature_checks_key_identity() -> None:
    w1, w2 = witness("w1.example"), witness("w2.example")
    text = checkpoint().text()
    sig = w1.cosign(text, 7)
    assert w1.verifier().verify_cosignature(text, sig) == 7
    with pytest.raises(SignatureError):
        w2.verifier().verify_cosignature(text, sig)
    with pytest.raises(SignatureError):
        short = NoteSignature(sig.name, sig.key_id, sig.signature[:-1])
        w1.verifier().verify_cosignature(text, short)


def test_cosignature_keys_round_trip_and_differ_from_log_keys() -> None:
    w = CosignatureSigner.generate("w.example")
    assert CosignatureSigner.from_skey(w.skey()).verifier() == w.verifier()
    assert CosignatureVerifier.from_vkey(w.verifier().vkey()) == w.verifier()
    assert w.skey().split("+", 4)[4].startswith("B")  # 0x04 in base64
    # A log skey is not a cosigner skey, and the other way round.
    with pytest.raises(FormatError):
        CosignatureSigner.from_skey(log_signer().skey())
    with pytest.raises(FormatError):
        Signer.from_skey(w.skey())
    with pytest.raises(FormatError):
        Verifier.from_vkey(w.verifier().vkey())
    # Same seed and name under 0x01 and 0x04 gives different key IDs (domain separation).
    as_log_key = Verifier.from_public_key("w.example", w.verifier().public_key)
    assert w.verifier().key_id != as_log_key.key_id
    with pytest.raises(TypeError):
        CosignatureVerifier(object(), "w", bytes(32))


def test_add_cosignatures_replaces_same_key_and_keeps_others_verbatim() -> None:
    cp = checkpoint()
    w1, w2 = witness("w1.example"), witness("w2.example")
    note = add_cosignatures(sign_checkpoint(cp, log_signer()), [w1.cosign(cp.text(), 1)])
    note2 = add_cosignatures(note, [w2.cosign(cp.text(), 2), w1.cosign(cp.text(), 3)])
    sigs = parse_note(note2).signatures
    assert [s.name for s in sigs] == [ORIGIN, "w2.example", "w1.example"]
    assert note2.startswith(note.split(b"\n\n")[0])
    assert cosignatures(note2, [w1.verifier(), w2.verifier()]) == {"w1.example": 3, "w2.example": 2}


def test_add_cosignatures_rejections() -> None:
    cp = checkpoint()
    note = sign_checkpoint(cp, log_signer())
    with pytest.raises(FormatError):
        add_cosignatures(note[:-1], [])
    with pytest.raises(FormatError):
        add_cosignatures(b"not a checkpoint\n\n" + note.split(b"\n\n")[1], [])
    sig = witness("w1.example").cosign(cp.text(), 1)
    many = [NoteSignature(f"w{i}", sig.key_id, sig.signature) for i in range(MAX_SIGNATURES)]
    with pytest.raises(FormatError):
        add_cosignatures(note, many)  # 1 + 100 > 100
    assert len(parse_note(add_cosignatures(note, many[:-1])).signatures) == MAX_SIGNATURES


def test_quorum_argument_validated() -> None:
    note = sign_checkpoint(checkpoint(), log_signer())
    with pytest.raises(FormatError):
        verify_checkpoint(note, log_signer().verifier(), quorum=-1)


@settings(max_examples=30, deadline=None)
@given(
    cp=_checkpoints.filter(lambda c: " " not in c.origin and "+" not in c.origin),
    timestamps=st.lists(st.integers(min_value=0, max_value=MAX_TIMESTAMP), min_size=1, max_size=3),
)
def test_sign_cosign_verify_round_trip(cp: Checkpoint, timestamps: list[int]) -> None:
    names = [f"w{i}.example" for i in range(len(timestamps))]
    try:
        log = log_signer(cp.origin)
    except FormatError:
        return  # the origin is not a valid key name (e.g. contains a Unicode space)
    note = sign_checkpoint(cp, log)
    note = add_cosignatures(
        note, [witness(n).cosign(cp.text(), t) for n, t in zip(names, timestamps, strict=True)]
    )
    wits = [witness(n).verifier() for n in names]
    assert verify_checkpoint(note, log.verifier(), witnesses=wits, quorum=len(names)) == cp
    assert cosignatures(note, wits) == dict(zip(names, timestamps, strict=True))


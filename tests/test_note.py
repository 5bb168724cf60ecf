"""Tests for protocol.note: published Go/C2SP/transparency-dev vectors, rejections, round trips."""

from __future__ import annotations

import base64
import contextlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import FormatError, ProtocolError, SignatureError
from protocol.note import (
    MAX_SIGNATURES,
    Note,
    NoteSignature,
    NoteVerifier,
    Signer,
    Verifier,
    key_id,
    open_note,
    parse_note,
    sign_note,
)

VECTORS = Path(__file__).parent / "vectors" / "note"
DASH = "— "


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


GO = load("golang-mod-note.json")
C2SP = load("c2sp-examples.json")
TDW = load("transparency-dev-witness.json")
TDF = load("transparency-dev-formats.json")

GO_TEXT: str = GO["text"]
PETER_SIG: str = GO["peter_sig_line"]
ENOCH_SIG: str = GO["enoch_sig_line"]


def b(s: str) -> bytes:
    return s.encode("utf-8")


@pytest.fixture
def peter() -> Verifier:
    return Verifier.from_vkey(GO["peter_vkey"])


@pytest.fixture
def enoch() -> Verifier:
    return Verifier.from_vkey(GO["enoch_vkey"])


# --- golang/mod sumdb/note vectors ------------------------------------------------------------


def test_go_vkey_and_skey_round_trip() -> None:
    v = Verifier.from_vkey(GO["peter_vkey"])
    s = Signer.from_skey(GO["peter_skey"])
    assert v.name == s.name == "PeterNeumann"
    assert v.key_id == s.key_id == bytes.fromhex("c74f20a3")
    assert v.vkey() == GO["peter_vkey"]
    assert s.skey() == GO["peter_skey"]
    assert s.verifier() == v
    assert key_id("PeterNeumann", b"\x01" + v.public_key) == bytes.fromhex("c74f20a3")


def test_go_sign_reproduces_signature_byte_for_byte() -> None:
    signer = Signer.from_skey(GO["peter_skey"])
    assert sign_note(b(GO_TEXT), signer) == b(GO_TEXT + "\n" + PETER_SIG)


def test_go_open_one_verified_one_unknown(peter: Verifier) -> None:
    note, signed = open_note(b(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG), [peter])
    assert note.text == b(GO_TEXT)
    assert signed == [peter]
    assert [s.name for s in note.signatures] == ["PeterNeumann", "EnochRoot"]
    assert note.signatures[1].key_id == bytes.fromhex("af0cfe78")


def test_go_open_both_verified(peter: Verifier, enoch: Verifier) -> None:
    _, signed = open_note(b(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG), [peter, enoch])
    assert signed == [peter, enoch]


def test_go_open_no_known_key() -> None:
    with pytest.raises(SignatureError):
        open_note(b(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG), [])


def test_go_ambiguous_verifier(peter: Verifier, enoch: Verifier) -> None:
    # Two different keys behind one (name, key ID) are ambiguous, but only an error if a
    # signature names them (as with Go's VerifierList). Real key IDs differ, so use a stub.
    class Collider:
        name = "EnochRoot"
        key_id = enoch.key_id

        def verify(self, msg: bytes, sig: bytes) -> None:
            raise AssertionError("must not be called")

    known: list[NoteVerifier] = [enoch, peter, Collider()]
    with pytest.raises(SignatureError, match="ambiguous"):
        open_note(b(GO_TEXT + "\n" + ENOCH_SIG), known)
    open_note(b(GO_TEXT + "\n" + PETER_SIG), known)
    # The same key listed twice is not ambiguous.
    open_note(b(GO_TEXT + "\n" + ENOCH_SIG), [enoch, peter, Verifier.from_vkey(GO["enoch_vkey"])])


def test_go_too_many_signatures(peter: Verifier) -> None:
    at_limit = b(GO_TEXT + "\n" + PETER_SIG * MAX_SIGNATURES)
    open_note(at_limit, [peter])
    over = b(GO_TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1))
    for verifiers in ([peter], []):
        with pytest.raises(FormatError):
            open_note(over, verifiers)


def test_go_invalid_signature(peter: Verifier) -> None:
    bad = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(SignatureError, match="invalid signature"):
        open_note(b(GO_TEXT + "\n" + bad), [peter])


def test_go_duplicated_signatures(peter: Verifier) -> None:
    enoch_abcd = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    msg = GO_TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + enoch_abcd
    note, signed = open_note(b(msg), [peter])
    assert signed == [peter]
    assert len(note.signatures) == 5  # parse_note keeps every line, duplicates included


def test_go_later_repeat_of_known_key_is_not_verified(peter: Verifier) -> None:
    # Go verifies only the first signature per known key; a bad repeat after it is skipped.
    bad = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    open_note(b(GO_TEXT + "\n" + PETER_SIG + bad), [peter])
    with pytest.raises(SignatureError):
        open_note(b(GO_TEXT + "\n" + bad + PETER_SIG), [peter])


@pytest.mark.parametrize(
    "msg",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        GO_TEXT + "\n" + DASH + "Bad Name " + PETER_SIG.split(" ")[2].rstrip("\n"),
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
    ],
)
def test_go_malformed_notes(msg: str, peter: Verifier) -> None:
    with pytest.raises(FormatError):
        open_note(b(msg), [peter])
    with pytest.raises(FormatError):
        parse_note(b(msg))


def test_go_malformed_note_invalid_utf8(peter: Verifier) -> None:
    with pytest.raises(FormatError):
        open_note(b"\xff" + b(GO_TEXT + "\n" + PETER_SIG), [peter])


def test_go_vkey_manglings_rejected() -> None:
    vkey = GO["peter_vkey"]
    for i in range(len(vkey) + 1):
        for j in range(i + 1, len(vkey) + 1):
            if (i, j) != (0, len(vkey)):
                with pytest.raises(FormatError):
                    Verifier.from_vkey(vkey[i:j])
    for i in range(len(vkey)):
        with pytest.raises(FormatError):
            Verifier.from_vkey(vkey[:i] + chr(ord(vkey[i]) + 1) + vkey[i + 1 :])


def test_go_skey_manglings_rejected() -> None:
    skey = GO["peter_skey"]
    for i in range(len(skey) + 1):
        for j in range(i + 1, len(skey) + 1):
            if (i, j) != (0, len(skey)):
                with pytest.raises(FormatError):
                    Signer.from_skey(skey[i:j])
    for i in range(len(skey)):
        with pytest.raises(FormatError):
            Signer.from_skey(skey[:i] + chr(ord(skey[i]) + 1) + skey[i + 1 :])


@pytest.mark.parametrize("vkey", list(GO["bad_vkeys"].values()), ids=list(GO["bad_vkeys"]))
def test_go_bad_vkeys(vkey: str) -> None:
    with pytest.raises(FormatError):
        Verifier.from_vkey(vkey)


# --- C2SP signed-note example ----------------------------------------------------------------


def test_c2sp_signed_note_example_parses() -> None:
    note = parse_note(b(C2SP["signed_note"]))
    assert note.text.decode().endswith("ed è subito sera.\n")
    assert b"\n\n" in note.text  # the text may contain blank lines; the last one separates
    (sig,) = note.signatures
    assert sig.name == "quasimodo.example/salvatore"
    assert len(sig.signature) == 64
    # Its key is not published: no known key signed it, and a same-name key is ignored.
    same_name = Signer.generate("quasimodo.example/salvatore").verifier()
    with pytest.raises(SignatureError, match="no signature from a known key"):
        open_note(b(C2SP["signed_note"]), [same_name])


# --- transparency-dev vectors ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["mInit", "mNext", "frog"])
def test_transparency_dev_witness_notes(name: str) -> None:
    data = b(TDW["notes_origin_differs_from_key_name"][name])
    monkeys = Verifier.from_vkey(TDW["monkeys_vkey"])
    note, signed = open_note(data, [monkeys])
    assert signed == [monkeys]
    assert sign_note(note.text, Signer.from_skey(TDW["monkeys_skey"])) == data
    bananas = Verifier.from_vkey(TDW["bananas_vkey"])
    with pytest.raises(SignatureError):
        open_note(data, [bananas])


def test_transparency_dev_all_keys_load() -> None:
    for who in ("monkeys", "bananas", "witness"):
        signer = Signer.from_skey(TDW[f"{who}_skey"])
        assert signer.verifier().vkey() == TDW[f"{who}_vkey"]


def test_transparency_dev_formats_ed25519_vkey_with_plus_in_base64() -> None:
    v = Verifier.from_vkey(TDF["ed25519_vkey_alg_0x01"])
    assert v.name == "TEST"
    assert v.key_id == bytes.fromhex("7997405c")
    assert v.vkey() == TDF["ed25519_vkey_alg_0x01"]


@pytest.mark.parametrize(
    "vkey", list(TDF["vkeys_invalid"].values()), ids=list(TDF["vkeys_invalid"])
)
def test_transparency_dev_formats_invalid_vkeys(vkey: str) -> None:
    with pytest.raises(FormatError):
        Verifier.from_vkey(vkey)


def test_cosignature_vkey_is_not_a_note_vkey() -> None:
    with pytest.raises(FormatError, match="algorithm 0x04"):
        Verifier.from_vkey(TDF["cosignature_vkeys_valid"][0])


# --- rejections ------------------------------------------------------------------------------


def _signed(text: bytes = b"hello\nworld\n") -> tuple[Signer, bytes]:
    signer = _signer("example.com/log")
    return signer, sign_note(text, signer)


@cache
def _signer(name: str) -> Signer:
    return Signer.generate(name)


def _sig_line(name: str, blob: bytes) -> bytes:
    return b(f"{DASH}{name} {base64.b64encode(blob).decode()}\n")


def test_reject_bad_base64() -> None:
    signer, note = _signed()
    text = note.split(b"\n\n")[0] + b"\n"
    line = note[len(text) + 1 :]
    for bad in (
        line.replace(b"=", b""),  # missing padding
        line[:-2] + b"!\n",  # outside the alphabet
        line[:-1] + b"==\n",  # over-padded
        line[:-1] + b" \n",  # trailing space
        b(f"{DASH}{signer.name} \n"),  # empty
    ):
        with pytest.raises(FormatError):
            open_note(text + b"\n" + bad, [signer.verifier()])


def test_reject_signature_too_short() -> None:
    signer, note = _signed()
    text = note.split(b"\n\n")[0] + b"\n"
    with pytest.raises(FormatError):
        parse_note(text + b"\n" + _sig_line(signer.name, signer.key_id))  # key ID only


def test_wrong_key_id_is_an_unknown_key() -> None:
    signer, note = _signed()
    parsed = parse_note(note)
    sig = parsed.signatures[0]
    flipped = bytes([sig.key_id[0] ^ 1]) + sig.key_id[1:]
    forged = parsed.text + b"\n" + NoteSignature(sig.name, flipped, sig.signature).line()
    with pytest.raises(SignatureError, match="no signature from a known key"):
        open_note(forged, [signer.verifier()])


def test_reject_wrong_alg_byte_in_vkey_and_skey() -> None:
    signer = _signer("example.com/log")
    vkey = signer.verifier().vkey()
    name, kid, key64 = vkey.split("+", 2)
    raw = base64.b64decode(key64)
    for alg in (0x00, 0x02, 0x04, 0xFF):
        material = bytes([alg]) + raw[1:]
        fixed_id = key_id(name, material).hex()  # a correct key ID, so only the alg is wrong
        with pytest.raises(FormatError):
            Verifier.from_vkey(f"{name}+{fixed_id}+{base64.b64encode(material).decode()}")
    skey = signer.skey()
    seed = base64.b64decode(skey.split("+", 4)[4])
    wrong_alg = base64.b64encode(bytes([0x04]) + seed[1:]).decode()
    with pytest.raises(FormatError):
        Signer.from_skey(f"PRIVATE+KEY+{name}+{kid}+{wrong_alg}")


def test_reject_missing_blank_line_and_trailing_text() -> None:
    _, note = _signed()
    text, sigs = note.split(b"\n\n")
    with pytest.raises(FormatError):
        parse_note(text + b"\n" + sigs)  # no blank line
    with pytest.raises(FormatError):
        parse_note(note + b"trailing")  # no final newline
    with pytest.raises(FormatError):
        parse_note(note + b"trailing text\n")  # not a signature line
    with pytest.raises(FormatError):
        parse_note(note[:-1])


def test_reject_tampered_text() -> None:
    signer, note = _signed()
    with pytest.raises(SignatureError):
        open_note(note.replace(b"hello", b"jello"), [signer.verifier()])


@pytest.mark.parametrize("char", ["\t", "\r", "\x00", "\x1f", "\x1c"])
def test_reject_control_characters(char: str) -> None:
    signer, note = _signed()
    with pytest.raises(FormatError):
        parse_note(note.replace(b"hello", b(f"hel{char}lo")))
    with pytest.raises(FormatError):
        sign_note(b(f"hel{char}lo\n"), signer)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u00a0b", "a\u3000b", "a\nb", "a\x00b"])
def test_reject_invalid_names(name: str) -> None:
    with pytest.raises(FormatError):
        Signer.generate(name)
    with pytest.raises(FormatError):
        NoteSignature(name, b"\x00" * 4, b"\x00")
    with pytest.raises(FormatError):
        Verifier.from_public_key(name, bytes(32))


def test_sign_note_rejections() -> None:
    signer = _signer("example.com/log")
    with pytest.raises(FormatError):
        sign_note(b"no newline", signer)
    with pytest.raises(FormatError):
        sign_note(b"\xff\n", signer)
    with pytest.raises(FormatError):
        sign_note(b"text\n")
    with pytest.raises(FormatError):
        sign_note(b"text\n", *([signer] * (MAX_SIGNATURES + 1)))


def test_key_objects_only_from_class_methods() -> None:
    with pytest.raises(TypeError):
        Verifier(object(), "a", bytes(32))
    with pytest.raises(TypeError):
        Signer(object(), "a", None)  # type: ignore[arg-type]


def test_signer_repr_hides_the_seed() -> None:
    # The key's base64 may itself hold "+" (one key in 64 ends with one), so the
    # seed is the fifth field, never "whatever follows the last +". Many keys, so
    # that such seeds are among them.
    for _ in range(256):
        signer = Signer.generate("example.com/log")  # not _signer: that one is cached
        seed_b64 = signer.skey().split("+", 4)[4]
        assert len(seed_b64) == 44
        assert seed_b64 not in repr(signer)
        assert seed_b64[:12] not in repr(signer)
        assert "PRIVATE" not in repr(signer)


def test_verify_wrong_length_signature() -> None:
    signer = _signer("example.com/log")
    v = signer.verifier()
    v.verify(b"m", signer.sign(b"m"))
    for sig in (b"", signer.sign(b"m")[:-1], signer.sign(b"m") + b"\x00"):
        with pytest.raises(SignatureError):
            v.verify(b"m", sig)


def test_note_signature_validation() -> None:
    with pytest.raises(FormatError):
        NoteSignature("a", b"\x00" * 3, b"\x00")
    with pytest.raises(FormatError):
        NoteSignature("a", b"\x00" * 4, b"")
    with pytest.raises(FormatError):
        Note(b"no newline", ())


# --- properties ------------------------------------------------------------------------------

# Note text: lines of any Unicode except control characters and surrogates, each ending in "\n";
# blank lines allowed (the last blank line in a note is the separator).
_line = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30)
_texts = st.lists(_line, min_size=1, max_size=6).map(lambda ls: b("".join(x + "\n" for x in ls)))
_names = st.text(
    st.characters(
        blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="+\x85"
    ),
    min_size=1,
    max_size=20,
)
_signer_names = st.sampled_from(["a", "example.com/log", "wit/ness-1", "ναι.example", "x" * 40])


@settings(max_examples=60, deadline=None)
@given(text=_texts, names=st.lists(_signer_names, min_size=1, max_size=4, unique=True))
def test_sign_then_open_round_trip(text: bytes, names: list[str]) -> None:
    signers = [_signer(n) for n in names]
    data = sign_note(text, *signers)
    note, signed = open_note(data, [s.verifier() for s in signers])
    assert note.text == text
    assert [v.name for v in signed] == names
    assert [s.name for s in note.signatures] == names


@settings(max_examples=100, deadline=None)
@given(
    text=_texts,
    sigs=st.lists(
        st.builds(
            NoteSignature,
            name=_names,
            key_id=st.binary(min_size=4, max_size=4),
            signature=st.binary(min_size=1, max_size=80),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_format_then_parse_round_trip(text: bytes, sigs: list[NoteSignature]) -> None:
    data = text + b"\n" + b"".join(s.line() for s in sigs)
    assert parse_note(data) == Note(text, tuple(sigs))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_parse_note_only_raises_format_error(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        parse_note(data)


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_mutated_notes_fail_closed(pos: int, byte: int) -> None:
    signer, note = _signed()
    i = pos % len(note)
    mutated = note[:i] + bytes([byte]) + note[i + 1 :]
    try:
        parsed, signed = open_note(mutated, [signer.verifier()])
    except ProtocolError:
        return
    # Only mutations that leave the signed text and the signature bytes intact may pass.
    assert parsed.text == b"hello\nworld\n"
    assert signed == [signer.verifier()]

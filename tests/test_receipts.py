"""Tests for protocol.receipts: re-shared entries, receipts as JSON, A -> B -> C chain checks."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import merkle
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.errors import FormatError, ProofError, SignatureError, VerificationError
from protocol.jcs import canonicalize
from protocol.note import Signer, Verifier
from protocol.receipts import (
    MAX_RECEIPT_DEPTH,
    Receipt,
    reshared_entry_fields,
    verify_receipt_chain,
)
from protocol.records import (
    Entry,
    Revocation,
    encode_record,
    entry_from_dict,
    new_nonce,
    new_record_id,
)

T = "2026-03-01T12:00:00Z"


def random_md5() -> str:
    return os.urandom(16).hex()


@dataclass
class Node:
    """An in-memory node with one set: its key, its log origin and its leaves."""

    org: str
    host: str
    signer: Signer = field(init=False)
    leaves: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.signer = Signer.generate(self.host)

    @property
    def origin(self) -> str:
        return f"{self.host}/csam"

    def verifier(self) -> Verifier:
        # The set's log is signed with the node key under the set origin (design.md "Identity").
        return self.signer.with_name(self.origin).verifier()

    def append(self, data: bytes) -> int:
        # Some unrelated leaves first, so that indices and proofs are not trivial.
        self.leaves += [os.urandom(20) for _ in range(len(self.leaves) % 3 + 1)]
        self.leaves.append(data)
        return len(self.leaves) - 1

    def checkpoint(self) -> bytes:
        hashes = [merkle.leaf_hash(x) for x in self.leaves]
        cp = Checkpoint(self.origin, len(hashes), merkle.root_from_leaf_hashes(hashes))
        return sign_checkpoint(cp, self.signer.with_name(self.origin))

    def receipt_for(self, index: int, upstream: Receipt | None = None) -> Receipt:
        hashes = [merkle.leaf_hash(x) for x in self.leaves]
        return Receipt(
            origin=self.origin,
            index=index,
            leaf=self.leaves[index],
            checkpoint=self.checkpoint(),
            proof=tuple(merkle.inclusion_proof(hashes, index)),
            upstream=upstream,
        )


def original(node: Node, **changes: Any) -> Entry:
    rid = new_record_id()
    value: dict[str, Any] = {
        "v": 1,
        "type": "entry",
        "id": rid,
        "author": node.org,
        "created": T,
        "nonce": new_nonce(),
        "hash": {"type": "md5", "value": random_md5()},
        "media": "image",
        "labels": ["ic:A1"],
        "vetting": {"status": "confirmed", "reviews": 2},
        "provenance": {"org": node.org, "node": node.origin, "record": rid, "first_seen": T},
        "expires": "2030-01-01T00:00:00Z",
    }
    value.update(changes)
    return entry_from_dict(value)


def reshare(upstream: Entry, by: Node, from_origin: str, **changes: Any) -> Entry:
    fields = reshared_entry_fields(upstream, org=by.org, upstream_origin=from_origin, at=T)
    fields.update(changes)
    return entry_from_dict(
        {**fields, "id": new_record_id(), "author": by.org, "created": T, "nonce": new_nonce()}
    )


@dataclass
class World:
    a: Node
    b: Node
    c: Node
    ea: Entry
    eb: Entry
    ec: Entry
    rb: Receipt  # B's receipt for eb (proves ea in A's log)
    rc: Receipt  # C's receipt for ec (proves eb in B's log, with rb upstream)

    def keys(self) -> dict[str, Verifier]:
        return {n.origin: n.verifier() for n in (self.a, self.b, self.c)}


def world() -> World:
    a = Node("a.org", "hashfed.a.example")
    b = Node("b.org", "hashfed.b.example")
    c = Node("c.org", "hashfed.c.example")
    ea = original(a)
    ia = a.append(encode_record(ea))
    eb = reshare(ea, b, a.origin)
    rb = a.receipt_for(ia)
    ib = b.append(encode_record(eb))
    a.append(os.urandom(30))  # logs keep growing after the receipt's checkpoint
    ec = reshare(eb, c, b.origin)
    rc = b.receipt_for(ib, upstream=rb)
    c.append(encode_record(ec))
    return World(a, b, c, ea, eb, ec, rb, rc)


def lookup(keys: dict[str, Verifier]) -> Any:
    return keys.__getitem__


# --- reshared_entry_fields ------------------------------------------------------------------------


def test_reshared_fields_copy_everything_and_append_one_hop() -> None:
    w = world()
    fields = reshared_entry_fields(w.ea, org="b.org", upstream_origin=w.a.origin, at=T)
    assert set(fields) == {
        "v",
        "type",
        "hash",
        "media",
        "labels",
        "generated",
        "vetting",
        "provenance",
        "expires",
    }
    assert fields["provenance"]["chain"] == [
        {"org": "b.org", "origin": w.a.origin, "record": w.ea.id, "at": T}
    ]
    up = w.ea.model_dump(mode="json", exclude_none=True)
    for name in ("hash", "media", "labels", "generated", "vetting", "expires"):
        assert fields[name] == up[name]
    assert {k: v for k, v in fields["provenance"].items() if k != "chain"} == {
        k: v for k, v in up["provenance"].items() if k != "chain"
    }
    # The second hop is appended after the first.
    assert [h["org"] for h in w.ec.model_dump()["provenance"]["chain"]] == ["b.org", "c.org"]
    # The upstream entry is not changed by building the fields.
    assert w.ea.provenance.chain == ()


def test_reshared_fields_refuse_bad_hops_and_long_chains() -> None:
    w = world()
    for kwargs in (
        {"org": "Not An Org", "upstream_origin": w.a.origin, "at": T},
        {"org": "b.org", "upstream_origin": "https://not/an/origin", "at": T},
        {"org": "b.org", "upstream_origin": w.a.origin, "at": "yesterday"},
    ):
        with pytest.raises(FormatError, match=r"invalid hop"):
            reshared_entry_fields(w.ea, **kwargs)
    entry = w.ea
    for _ in range(16):
        entry = reshare(entry, w.b, w.a.origin)
    with pytest.raises(FormatError, match=r"16 times"):
        reshared_entry_fields(entry, org="b.org", upstream_origin=w.a.origin, at=T)
    with pytest.raises(FormatError):
        reshared_entry_fields("entry", org="b.org", upstream_origin=w.a.origin, at=T)  # type: ignore[arg-type]


# --- honest chains --------------------------------------------------------------------------------


def test_one_hop_and_two_hop_chains_verify() -> None:
    w = world()
    assert verify_receipt_chain(w.eb, w.rb, lookup(w.keys())) == [w.a.origin]
    assert verify_receipt_chain(w.ec, w.rc, lookup(w.keys())) == [w.a.origin, w.b.origin]


def test_receipts_survive_json() -> None:
    w = world()
    again = Receipt.from_json(w.rc.to_json())
    assert again == w.rc
    assert verify_receipt_chain(w.ec, again, lookup(w.keys())) == [w.a.origin, w.b.origin]


# --- tampering ------------------------------------------------------------------------------------


def flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1 :]


@pytest.mark.parametrize("nested", [False, True])
def test_a_changed_leaf_byte_is_a_proof_error(nested: bool) -> None:
    w = world()
    if nested:
        rc = dataclasses.replace(w.rc, upstream=dataclasses.replace(w.rb, leaf=flip(w.rb.leaf, 40)))
        hop = "hop 0"
    else:
        rc = dataclasses.replace(w.rc, leaf=flip(w.rc.leaf, 40))
        hop = "hop 1"
    with pytest.raises(ProofError, match=hop) as e:
        verify_receipt_chain(w.ec, rc, lookup(w.keys()))
    assert e.value.field == f"provenance.chain[{hop[-1]}]"


def test_a_changed_proof_hash_is_a_proof_error() -> None:
    w = world()
    assert w.rc.proof
    proof = (flip(w.rc.proof[0], 0), *w.rc.proof[1:])
    with pytest.raises(ProofError, match=r"hop 1"):
        verify_receipt_chain(w.ec, dataclasses.replace(w.rc, proof=proof), lookup(w.keys()))
    with pytest.raises(ProofError, match=r"hop 1"):
        verify_receipt_chain(
            w.ec, dataclasses.replace(w.rc, proof=w.rc.proof[:-1]), lookup(w.keys())
        )
    with pytest.raises(ProofError, match=r"hop 1"):
        verify_receipt_chain(w.ec, dataclasses.replace(w.rc, index=10**6), lookup(w.keys()))


def test_a_bad_checkpoint_signature_is_a_signature_error() -> None:
    w = world()
    note = w.rc.checkpoint
    # Same text, signed by a different key under the same name.
    text = note[: note.rindex(b"\n\n") + 1]
    cp = Checkpoint(w.b.origin, int(text.split(b"\n")[1]), base64.b64decode(text.split(b"\n")[2]))
    forged = sign_checkpoint(cp, Signer.generate(w.b.origin))
    for bad in (forged, note.replace(b"csam\n", b"csam\n", 1)[:-10] + b"AAAAAAAAA\n", b"junk"):
        with pytest.raises(SignatureError, match=r"hop 1"):
            verify_receipt_chain(w.ec, dataclasses.replace(w.rc, checkpoint=bad), lookup(w.keys()))
    # A checkpoint signed for a different tree size or root than the proof is a proof error.
    grown = dataclasses.replace(w.rc, checkpoint=w.b.checkpoint())
    w.b.append(os.urandom(10))
    with pytest.raises(ProofError):
        verify_receipt_chain(
            w.ec, dataclasses.replace(grown, checkpoint=w.b.checkpoint()), lookup(w.keys())
        )


def test_the_wrong_or_an_unknown_key_for_an_origin_is_a_signature_error() -> None:
    w = world()
    keys = w.keys()
    keys[w.a.origin] = w.c.verifier()
    with pytest.raises(SignatureError, match=r"hop 0"):
        verify_receipt_chain(w.ec, w.rc, lookup(keys))
    # Right name, wrong key.
    keys[w.a.origin] = w.c.signer.with_name(w.a.origin).verifier()
    with pytest.raises(SignatureError, match=r"hop 0"):
        verify_receipt_chain(w.ec, w.rc, lookup(keys))
    del keys[w.a.origin]
    with pytest.raises(SignatureError, match=r"hop 0 .*: no key is known"):
        verify_receipt_chain(w.ec, w.rc, lookup(keys))

    def refuse(origin: str) -> Verifier:
        raise SignatureError(f"{origin} is not a partner")

    with pytest.raises(SignatureError, match=r"hop 1"):
        verify_receipt_chain(w.ec, w.rc, refuse)


@pytest.mark.parametrize(
    "changes",
    [
        {"labels": ["ic:A1", "ic:B1"]},
        {"labels": []},
        {"vetting": {"status": "confirmed", "reviews": 3}},
        {"generated": "not_generated"},
        {"expires": "2031-01-01T00:00:00Z"},
        {"media": "video", "hash": None},
    ],
)
def test_a_reshare_that_changes_metadata_is_refused(changes: dict[str, Any]) -> None:
    w = world()
    if changes.get("hash", 1) is None:
        changes = {"hash": {"type": "md5", "value": random_md5()}}
    # C re-shares B's entry but alters it.
    ec = reshare(w.eb, w.c, w.b.origin, **changes)
    with pytest.raises(VerificationError, match=r"hop 1 .*: .*differs .* in") as e:
        verify_receipt_chain(ec, w.rc, lookup(w.keys()))
    assert type(e.value) is VerificationError
    # The same one hop further up: B altered A's entry, C copied B's faithfully.
    a, b, c = w.a, w.b, w.c
    eb = reshare(w.ea, b, a.origin, **changes)
    ib = b.append(encode_record(eb))
    ec = reshare(eb, c, b.origin)
    with pytest.raises(VerificationError, match=r"hop 0 .*: .*differs"):
        verify_receipt_chain(ec, b.receipt_for(ib, upstream=w.rb), lookup(w.keys()))


def test_provenance_changes_are_refused() -> None:
    w = world()
    prov = w.ec.model_dump(mode="json", exclude_none=True)["provenance"]
    skipped = {**prov, "chain": prov["chain"][1:]}  # B's hop dropped
    ec = reshare(w.eb, w.c, w.b.origin, provenance=skipped)
    with pytest.raises(VerificationError):
        verify_receipt_chain(ec, w.rc, lookup(w.keys()))
    source = {**prov, "source_ref": "case-123"}
    with pytest.raises(VerificationError, match=r"provenance"):
        verify_receipt_chain(
            reshare(w.eb, w.c, w.b.origin, provenance=source), w.rc, lookup(w.keys())
        )
    # Skipping B entirely: C claims to have re-shared straight from A with B's receipt.
    direct = reshare(w.ea, w.c, w.a.origin)
    with pytest.raises(VerificationError, match=r"hop 0"):
        verify_receipt_chain(direct, w.rc, lookup(w.keys()))
    # The hop's fields must match the receipt and the entry.
    for hop_change in ({"org": "b.org"}, {"record": new_record_id()}, {"origin": w.c.origin}):
        chain = [*prov["chain"][:-1], {**prov["chain"][-1], **hop_change}]
        bad = reshare(w.eb, w.c, w.b.origin, provenance={**prov, "chain": chain})
        with pytest.raises(VerificationError, match=r"hop 1"):
            verify_receipt_chain(bad, w.rc, lookup(w.keys()))


def test_upstream_receipts_are_required_exactly_when_upstream_is_a_reshare() -> None:
    w = world()
    with pytest.raises(VerificationError, match=r"hop 1 .*: .*no upstream receipt") as e:
        verify_receipt_chain(w.ec, dataclasses.replace(w.rc, upstream=None), lookup(w.keys()))
    assert type(e.value) is VerificationError
    with pytest.raises(VerificationError, match=r"hop 0 .*: .*original, yet"):
        verify_receipt_chain(w.eb, dataclasses.replace(w.rb, upstream=w.rb), lookup(w.keys()))
    # An unrelated upstream receipt is caught by its own hop.
    with pytest.raises(VerificationError, match=r"hop 0"):
        verify_receipt_chain(w.ec, dataclasses.replace(w.rc, upstream=w.rc), lookup(w.keys()))


def test_the_original_must_name_its_own_log() -> None:
    a, b = Node("a.org", "hashfed.a.example"), Node("b.org", "hashfed.b.example")
    ea = original(a)
    wrong = original(
        a,
        provenance={
            "org": "a.org",
            "node": "elsewhere.example/x",
            "record": ea.id,
            "first_seen": T,
        },
        id=ea.id,
    )
    i = a.append(encode_record(wrong))
    eb = reshare(wrong, b, a.origin)
    with pytest.raises(VerificationError, match=r"own log"):
        verify_receipt_chain(eb, a.receipt_for(i), lookup({a.origin: a.verifier()}))


def test_an_upstream_leaf_that_is_not_an_entry_is_refused() -> None:
    w = world()
    rev = Revocation(
        id=new_record_id(),
        author="a.org",
        created=T,
        nonce=new_nonce(),
        target=w.ea.id,
        target_hash=w.ea.hash_ref(),
        reason="duplicate",
    )
    i = w.a.append(encode_record(rev))
    with pytest.raises(VerificationError, match=r"not an entry"):
        verify_receipt_chain(w.eb, w.a.receipt_for(i), lookup(w.keys()))
    j = w.a.append(b"not a record")
    with pytest.raises(VerificationError, match=r"not a valid record"):
        verify_receipt_chain(w.eb, w.a.receipt_for(j), lookup(w.keys()))


def test_an_original_entry_has_no_chain_to_verify() -> None:
    w = world()
    with pytest.raises(VerificationError, match=r"not a re-share"):
        verify_receipt_chain(w.ea, w.rb, lookup(w.keys()))
    with pytest.raises(FormatError):
        verify_receipt_chain("entry", w.rb, lookup(w.keys()))  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        verify_receipt_chain(w.eb, "receipt", lookup(w.keys()))  # type: ignore[arg-type]


# --- JSON -----------------------------------------------------------------------------------------

hashes = st.binary(min_size=32, max_size=32)
origins = st.sampled_from(["hashfed.a.example/csam", "b.example:8443/x/y", "c"])


def receipts(depth: int = 3) -> st.SearchStrategy[Receipt]:
    base = st.builds(
        Receipt,
        origin=origins,
        index=st.integers(0, 2**53 - 1),
        leaf=st.binary(min_size=1, max_size=200),
        checkpoint=st.binary(min_size=1, max_size=200),
        proof=st.lists(hashes, max_size=6).map(tuple),
        upstream=st.none(),
    )
    if depth == 0:
        return base
    return st.one_of(
        base, st.builds(lambda r, u: dataclasses.replace(r, upstream=u), base, receipts(depth - 1))
    )


@settings(max_examples=100)
@given(receipts())
def test_json_round_trips(r: Receipt) -> None:
    data = r.to_json()
    assert Receipt.from_json(data) == r
    assert Receipt.from_json(data).to_json() == data


def chain_of(depth: int) -> Receipt:
    r = Receipt("o", 0, b"x", b"c", ())
    for _ in range(depth - 1):
        r = Receipt("o", 1, b"x", b"c", (bytes(32),), upstream=r)
    return r


def test_depth_limit() -> None:
    deepest = chain_of(MAX_RECEIPT_DEPTH)
    assert deepest.depth == MAX_RECEIPT_DEPTH
    assert Receipt.from_json(deepest.to_json()) == deepest
    with pytest.raises(FormatError):
        Receipt("o", 1, b"x", b"c", (), upstream=deepest)
    too_deep = canonicalize({**chain_of(1).to_dict(), "upstream": deepest.to_dict()})
    with pytest.raises(FormatError):
        Receipt.from_json(too_deep)


GOOD: dict[str, Any] = {
    "origin": "a.example/x",
    "index": 3,
    "leaf": "eA==",
    "checkpoint": "Yw==",
    "proof": [base64.b64encode(bytes(32)).decode()],
}


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"null",
        b"[]",
        b"{}",
        b'"receipt"',
        b"{" + canonicalize(GOOD)[1:-1] + b",}",
        canonicalize({**GOOD, "extra": 1}),
        canonicalize({**GOOD, "upstream": None}),
        canonicalize({**GOOD, "upstream": []}),
        canonicalize({**GOOD, "upstream": {}}),
        canonicalize({k: v for k, v in GOOD.items() if k != "proof"}),
        canonicalize({**GOOD, "origin": "https://a.example"}),
        canonicalize({**GOOD, "origin": 7}),
        canonicalize({**GOOD, "index": -1}),
        canonicalize({**GOOD, "index": True}),
        canonicalize({**GOOD, "index": "3"}),
        b'{"checkpoint":"Yw==","index":3.5,"leaf":"eA==","origin":"a.example/x","proof":[]}',
        canonicalize({**GOOD, "leaf": ""}),
        canonicalize({**GOOD, "leaf": "eA"}),
        canonicalize({**GOOD, "leaf": "eB=="}),
        canonicalize({**GOOD, "leaf": "e A=="}),
        canonicalize({**GOOD, "leaf": "eA==\n"}),
        canonicalize({**GOOD, "checkpoint": None}),
        canonicalize({**GOOD, "proof": "AAAA"}),
        canonicalize({**GOOD, "proof": ["AAAA"]}),
        canonicalize({**GOOD, "proof": [GOOD["proof"][0]] * 65}),
        canonicalize({**GOOD, "upstream": {**GOOD, "leaf": 1}}),
        b'{"origin":"a","origin":"a","index":3,"leaf":"eA==","checkpoint":"Yw==","proof":[]}',
        b"\xff",
    ],
)
def test_junk_json_is_a_format_error(junk: bytes) -> None:
    with pytest.raises(FormatError):
        Receipt.from_json(junk)


def test_nested_errors_name_the_path() -> None:
    with pytest.raises(FormatError) as e:
        Receipt.from_json(canonicalize({**GOOD, "upstream": {**GOOD, "leaf": "eB=="}}))
    assert e.value.field == "receipt.upstream.leaf"


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_are_only_ever_format_errors(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        Receipt.from_json(data)


def test_receipt_validation() -> None:
    r = chain_of(1)
    for change in (
        {"index": -1},
        {"index": 2**53},
        {"leaf": b""},
        {"leaf": "text"},
        {"checkpoint": b""},
        {"checkpoint": bytes(40000)},
        {"proof": [bytes(32)]},
        {"proof": (bytes(31),)},
        {"proof": (bytes(32),) * 65},
        {"upstream": "r"},
        {"origin": "Bad Origin"},
    ):
        with pytest.raises(FormatError):
            dataclasses.replace(r, **change)
    with pytest.raises(FormatError):
        Receipt.from_json("text")  # type: ignore[arg-type]

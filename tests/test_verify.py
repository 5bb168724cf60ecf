"""protocol.verify: records, checkpoint notes, proofs against checkpoints, forks, log audits."""

from __future__ import annotations

import functools
import os
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import merkle
from protocol.checkpoint import Checkpoint, CosignatureSigner, add_cosignatures, sign_checkpoint
from protocol.errors import (
    FormatError,
    InconsistentTreeError,
    ProofError,
    RecordTooLargeError,
    SignatureError,
    VerificationError,
)
from protocol.note import Signer
from protocol.records import Entry, encode_record, new_nonce, new_record_id, record_from_dict
from protocol.verify import (
    AuditSummary,
    LogAuditor,
    check_fork,
    verify_checkpoint_note,
    verify_consistency_of,
    verify_inclusion_of,
    verify_log,
    verify_record,
)

ORIGIN = "hashfed.example.org/test"


# ---- synthetic records (random hashes only) ---------------------------------------------------


def make_entry(author: str = "a.example", hash_type: str = "pdq", **extra: Any) -> bytes:
    rid = new_record_id()
    value = os.urandom(32 if hash_type == "pdq" else 16).hex()
    h: dict[str, Any] = {"type": hash_type, "value": value}
    if hash_type == "pdq":
        h["quality"] = 90
    d: dict[str, Any] = {
        "type": "entry",
        "id": rid,
        "author": author,
        "created": "2026-01-02T03:04:05Z",
        "nonce": new_nonce(),
        "hash": h,
        "media": "image",
        "labels": ["ic:A1"],
        "vetting": {"status": "confirmed", "reviews": 2},
        "provenance": {
            "org": author,
            "node": "hashfed.example.org/test",
            "record": rid,
            "first_seen": "2026-01-01T00:00:00Z",
        },
    }
    d.update(extra)
    return encode_record(record_from_dict(d))


def make_revocation(
    target: bytes, author: str | None = None, role: str | None = None, **extra: Any
) -> bytes:
    entry = verify_record(target)
    assert isinstance(entry, Entry)
    by = author or entry.author
    d: dict[str, Any] = {
        "type": "revocation",
        "id": new_record_id(),
        "author": by,
        "created": "2026-01-03T00:00:00Z",
        "nonce": new_nonce(),
        "target": entry.id,
        "target_hash": {"type": entry.hash.type, "value": entry.hash.value},
        "role": role or ("author" if by == entry.author else "coordinator"),
        "reason": "false_positive",
    }
    d.update(extra)
    return encode_record(record_from_dict(d))


def make_log(n: int, seed: int = 0) -> list[bytes]:
    """n leaves: mostly entries of two authors and two hash types, with some revocations."""
    rng = random.Random(seed)
    leaves: list[bytes] = []
    live: list[bytes] = []
    for _ in range(n):
        if live and rng.random() < 0.2:
            target = live.pop(rng.randrange(len(live)))
            leaves.append(make_revocation(target))
        else:
            e = make_entry(rng.choice(["a.example", "b.example"]), rng.choice(["pdq", "md5"]))
            leaves.append(e)
            live.append(e)
    return leaves


def checkpoint_for(leaves: list[bytes], origin: str = ORIGIN) -> Checkpoint:
    root = merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    return Checkpoint(origin, len(leaves), root)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate(ORIGIN)


# ---- verify_record -------------------------------------------------------------------------------


def test_verify_record_accepts_canonical_and_rejects_the_rest() -> None:
    data = make_entry()
    assert isinstance(verify_record(data), Entry)
    with pytest.raises(FormatError, match=r"canonical"):
        verify_record(data.replace(b'{"', b'{ "', 1))
    with pytest.raises(FormatError):
        verify_record(b"not json")
    with pytest.raises(RecordTooLargeError):
        verify_record(b" " * (64 * 1024))
    with pytest.raises(FormatError):
        verify_record("text")  # type: ignore[arg-type]


# ---- checkpoints ---------------------------------------------------------------------------------


def test_verify_checkpoint_note(signer: Signer) -> None:
    cp = checkpoint_for(make_log(3))
    note = sign_checkpoint(cp, signer)
    assert verify_checkpoint_note(note, signer.verifier()) == cp
    other = Signer.generate(ORIGIN)
    with pytest.raises(SignatureError):
        verify_checkpoint_note(note, other.verifier())
    witness = CosignatureSigner.generate("witness.example")
    with pytest.raises(SignatureError, match=r"quorum"):
        verify_checkpoint_note(note, signer.verifier(), witnesses=[witness.verifier()], quorum=1)
    cosigned = add_cosignatures(note, [witness.cosign(cp.text(), 1_700_000_000)])
    got = verify_checkpoint_note(
        cosigned, signer.verifier(), witnesses=[witness.verifier()], quorum=1
    )
    assert got == cp


# ---- inclusion -----------------------------------------------------------------------------------


def test_inclusion_of_every_leaf() -> None:
    leaves = make_log(13)
    hashes = [merkle.leaf_hash(x) for x in leaves]
    cp = checkpoint_for(leaves)
    for i, data in enumerate(leaves):
        verify_inclusion_of(data, i, cp, merkle.inclusion_proof(hashes, i))
    proof = merkle.inclusion_proof(hashes, 5)
    with pytest.raises(ProofError, match=r"leaf 5 of hashfed.example.org/test at size 13"):
        verify_inclusion_of(leaves[4], 5, cp, proof)
    with pytest.raises(ProofError, match=r"leaf 5"):
        verify_inclusion_of(leaves[5], 5, cp, proof[:-1])
    with pytest.raises(FormatError, match=r"leaf 13"):
        verify_inclusion_of(leaves[5], 13, cp, proof)
    with pytest.raises(FormatError):
        verify_inclusion_of(leaves[5], 5, cp, [b"short", *proof[1:]])


# ---- consistency ---------------------------------------------------------------------------------


def test_consistency_of_growing_checkpoints() -> None:
    leaves = make_log(20)
    hashes = [merkle.leaf_hash(x) for x in leaves]
    for old_size in range(21):
        old = checkpoint_for(leaves[:old_size])
        for new_size in range(old_size, 21, 3):
            new = checkpoint_for(leaves[:new_size])
            verify_consistency_of(old, new, merkle.consistency_proof(hashes, old_size, new_size))


def test_consistency_rollback_fork_and_bad_proof() -> None:
    leaves = make_log(10)
    hashes = [merkle.leaf_hash(x) for x in leaves]
    old, new = checkpoint_for(leaves[:4]), checkpoint_for(leaves)
    with pytest.raises(InconsistentTreeError, match=r"rollback") as rollback:
        verify_consistency_of(new, old, [])
    assert rollback.value.evidence == ()
    forked = checkpoint_for([*leaves[:9], make_entry()])
    with pytest.raises(InconsistentTreeError, match=r"fork.*size 10") as fork:
        verify_consistency_of(forked, new, [])
    assert fork.value.evidence == ()
    proof = merkle.consistency_proof(hashes, 4, 10)
    with pytest.raises(ProofError, match=r"from size 4 to 10"):
        verify_consistency_of(old, forked, proof)
    with pytest.raises(ProofError, match=r"two logs"):
        verify_consistency_of(checkpoint_for(leaves[:4], "other.example/log"), new, proof)
    with pytest.raises(ProofError, match=r"empty"):
        verify_consistency_of(new, new, proof)
    with pytest.raises(FormatError, match=r"from size 4 to 10"):
        verify_consistency_of(old, new, [b"x" * 31, *proof[1:]])


# ---- forks ---------------------------------------------------------------------------------------


def test_check_fork_with_real_notes(signer: Signer) -> None:
    leaves = make_log(6)
    a = sign_checkpoint(checkpoint_for(leaves), signer)
    b = sign_checkpoint(checkpoint_for([*leaves[:5], make_entry()]), signer)
    with pytest.raises(InconsistentTreeError, match=r"fork.*size 6") as e:
        check_fork(a, b, signer.verifier())
    assert e.value.evidence == (a, b)
    # the same checkpoint twice, and two sizes: no fork shown by the notes alone
    check_fork(a, a, signer.verifier())
    smaller = sign_checkpoint(checkpoint_for(leaves[:3]), signer)
    check_fork(a, smaller, signer.verifier())
    # a note from another key is not evidence of anything
    intruder = sign_checkpoint(checkpoint_for([*leaves[:5], make_entry()]), Signer.generate(ORIGIN))
    with pytest.raises(SignatureError, match=r"checkpoint b"):
        check_fork(a, intruder, signer.verifier())
    with pytest.raises(FormatError, match=r"checkpoint a"):
        check_fork(b"junk", b, signer.verifier())


# ---- whole-log audits ----------------------------------------------------------------------------


def test_log_auditor_counts() -> None:
    e1 = make_entry("a.example", "pdq")
    e2 = make_entry("b.example", "md5", labels=["ic:B2", "x:y"])
    e3 = make_entry("a.example", "md5")
    r1 = make_revocation(e2)
    r2 = make_revocation(e1, author="coord.example", reason="other", text="court order")
    leaves = [e1, e2, e3, r1, r2]
    s = verify_log(leaves, checkpoint_for(leaves))
    assert isinstance(s, AuditSummary)
    assert (s.size, s.entries, s.revoked, s.active) == (5, 3, 2, 1)
    assert s.root_hash == checkpoint_for(leaves).root_hash
    assert dict(s.record_types) == {"entry": 3, "revocation": 2}
    assert dict(s.hash_types) == {"md5": 2, "pdq": 1}
    assert dict(s.revocation_reasons) == {"false_positive": 1, "other": 1}
    assert dict(s.labels) == {"ic:A1": 2, "ic:B2": 1, "x:y": 1}
    assert dict(s.authors) == {"a.example": 2, "b.example": 2, "coord.example": 1}
    d = s.as_dict()
    assert d["active"] == 1 and d["root_hash"] == s.root_hash.hex()


def test_empty_log() -> None:
    s = verify_log([], checkpoint_for([]))
    assert (s.size, s.root_hash, s.entries) == (0, merkle.EMPTY_ROOT, 0)


def test_bad_record_names_its_index() -> None:
    leaves = make_log(4)
    bad = [*leaves[:2], leaves[2] + b" ", leaves[3]]
    with pytest.raises(FormatError, match=r"leaf 2 ") as e:
        verify_log(bad, checkpoint_for(bad))
    assert e.value.field == "index 2"


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown", "not an earlier entry"),
        ("twice", "already revoked"),
        ("hash", "not the hash of entry"),
        ("author", "not the author of entry"),
        ("duplicate_id", "already used"),
    ],
)
def test_revocation_rules(case: str, message: str) -> None:
    e1, e2 = make_entry("a.example"), make_entry("b.example")
    if case == "unknown":
        bad = make_revocation(make_entry())
    elif case == "twice":
        bad = make_revocation(e1)
        e2 = make_revocation(e1)
    elif case == "hash":
        other = verify_record(make_entry())
        assert isinstance(other, Entry)
        bad = make_revocation(e1, target_hash={"type": other.hash.type, "value": other.hash.value})
    elif case == "author":
        bad = make_revocation(e1, author="b.example", role="author")
    else:
        entry = verify_record(e1)
        assert isinstance(entry, Entry)
        bad = make_entry(id=entry.id, provenance={**entry.provenance.model_dump(mode="json")})
    leaves = [e1, e2, bad]
    with pytest.raises(VerificationError, match=f"leaf 2 .*{message}") as e:
        verify_log(leaves, checkpoint_for(leaves))
    assert e.value.field == "index 2"
    assert type(e.value) is VerificationError


def test_finish_rejects_other_size_root_or_origin() -> None:
    leaves = make_log(7)
    auditor = LogAuditor(ORIGIN)
    for x in leaves[:5]:
        auditor.add(x)
    with pytest.raises(ProofError, match=r"checkpoint has 7 leaves but only 5"):
        auditor.finish(checkpoint_for(leaves))
    with pytest.raises(ProofError, match=r"covers only 3"):
        auditor.finish(checkpoint_for(leaves[:3]))
    with pytest.raises(ProofError, match=r"is not the checkpoint's root"):
        auditor.finish(Checkpoint(ORIGIN, 5, bytes(32)))
    with pytest.raises(ProofError, match=r"other.example"):
        auditor.finish(checkpoint_for(leaves[:5], "other.example/x"))
    assert auditor.finish(checkpoint_for(leaves[:5])).size == 5
    # finish changes nothing: the auditor continues with the log's growth
    assert auditor.add_many(leaves[5:]) == [merkle.leaf_hash(x) for x in leaves[5:]]
    assert auditor.finish(checkpoint_for(leaves)).size == 7
    with pytest.raises(ProofError, match=r"none were given"):
        LogAuditor(ORIGIN).finish(checkpoint_for(leaves))


# A pool of valid leaves built once: hypothesis draws logs from it (building records is the slow
# part, and the property is about the tree, not about record variety).
_POOL = make_log(64, seed=1)
_POOL_ENTRIES = [x for x in _POOL if isinstance(verify_record(x), Entry)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(_POOL_ENTRIES), max_size=40, unique=True))
def test_verify_log_root_equals_reference(leaves: list[bytes]) -> None:
    expected = merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    s = verify_log(leaves, Checkpoint(ORIGIN, len(leaves), expected))
    assert s.root_hash == expected
    assert s.size == s.entries == len(leaves)


# ---- scan_bundle + add_scanned: the audit's bundle path equals the per-leaf path --------------


def _pool_for_bundles() -> list[bytes]:
    """Entries of three authors, and revocations of some of them: right, by another author in
    the author role, with another hash, and as coordinator."""
    rng = random.Random(5)
    entries = [make_entry(rng.choice(["a.example", "b.example", "c.example"]),
                          rng.choice(["pdq", "md5"])) for _ in range(330)]
    revocations = []
    for target in entries[:: 6]:
        revocations.append(make_revocation(target))
    for target in entries[1:: 30]:
        revocations.append(make_revocation(target, author="z.example", role="author"))
        revocations.append(make_revocation(target, author="z.example", role="coordinator"))
        other = verify_record(entries[0])
        assert isinstance(other, Entry)
        revocations.append(make_revocation(
            target, target_hash={"type": other.hash.type, "value": other.hash.value}))
    return entries + revocations


_BUNDLE_POOL = _pool_for_bundles()
_BAD_LEAF = make_entry().replace(b'{"', b'{ "', 1)


def _outcome(add: Any, auditor: LogAuditor) -> tuple[Any, ...]:
    try:
        add()
    except (FormatError, VerificationError) as e:
        return ("error", type(e).__name__, e.message, e.field, auditor.size)
    s = auditor.summary()
    return ("ok", s.as_dict())


def _by_bundles(auditor: LogAuditor, leaves: list[bytes]) -> None:
    from protocol.verify import scan_bundle

    for first in range(0, len(leaves), 256):
        chunk = leaves[first : first + 256]
        auditor.add_scanned(scan_bundle(chunk, first), functools.partial(list, chunk))


def _by_leaf(auditor: LogAuditor, leaves: list[bytes]) -> None:
    for x in leaves:
        auditor.add(x)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 300),
    st.lists(st.integers(0, len(_BUNDLE_POOL) - 1), min_size=1, max_size=300),
    st.integers(0, 3),
    st.integers(0, 599),
)
def test_bundle_path_equals_per_leaf_path(
    prefix: int, picks: list[int], mode: int, at: int
) -> None:
    # The first ``prefix`` entries of the pool (so that later bundles refer to earlier ones),
    # then draws from the whole pool. mode 0: as drawn (often a duplicate id or an unknown
    # target); 1: every leaf once, in order of first use; 2: that, plus an invalid record at
    # ``at``; 3: that, with one leaf repeated (a duplicate id or a second revocation).
    leaves = _BUNDLE_POOL[:prefix] + [_BUNDLE_POOL[i] for i in picks]
    if mode:
        leaves = list(dict.fromkeys(leaves))
    if mode == 2 and leaves:
        leaves[at % len(leaves)] = _BAD_LEAF
    if mode == 3 and len(leaves) > 1:
        leaves.insert(at % len(leaves) + 1, leaves[at % len(leaves)])
    one, many = LogAuditor(ORIGIN), LogAuditor(ORIGIN)
    expected = _outcome(lambda: _by_leaf(one, leaves), one)
    assert _outcome(lambda: _by_bundles(many, leaves), many) == expected
    if expected[0] == "ok":
        assert many.summary().root_hash == merkle.root_from_leaf_hashes(
            [merkle.leaf_hash(x) for x in leaves])


#: entries of one shape (one author, pdq, the same labels and times), and revocations of some:
#: what scan_bundle checks a whole run of at once (EntryShapes.match_many)
_ONE_SHAPE = [make_entry("a.example") for _ in range(300)]
_ONE_SHAPE_POOL = _ONE_SHAPE + [make_revocation(t) for t in _ONE_SHAPE[::5]]


@settings(max_examples=40, deadline=None)
@given(
    st.permutations(range(len(_ONE_SHAPE_POOL))),
    st.integers(0, 300),
    st.integers(0, 3),
    st.integers(0, 599),
)
def test_shaped_bundles_equal_the_per_leaf_path(
    order: list[int], keep: int, mode: int, at: int
) -> None:
    # Entries in order, then a shuffle of the rest: revocations before, after and in the same
    # bundle as their targets. mode 1: an invalid leaf at ``at``; 2: a leaf repeated; 3: an
    # entry's id reused by another entry of the same shape.
    leaves = _ONE_SHAPE[:keep] + [_ONE_SHAPE_POOL[i] for i in order if i >= keep]
    if mode == 1:
        leaves[at % len(leaves)] = _BAD_LEAF
    if mode == 2:
        leaves.insert(at % len(leaves) + 1, leaves[at % len(leaves)])
    if mode == 3:
        entry = verify_record(_ONE_SHAPE[at % 300])
        leaves.insert(at % len(leaves), make_entry("a.example", id=entry.id))
    one, many = LogAuditor(ORIGIN), LogAuditor(ORIGIN)
    expected = _outcome(lambda: _by_leaf(one, leaves), one)
    assert _outcome(lambda: _by_bundles(many, leaves), many) == expected


def test_a_bundle_of_one_shape_is_checked_at_once() -> None:
    from protocol import verify

    scanned = verify.scan_bundle(_ONE_SHAPE[:256], 0)
    assert scanned.slow is None and len(scanned.entry_offsets) == 256
    run = verify._SHAPES.match_many(_ONE_SHAPE[:256])
    assert run is not None and len(run.ids) == 256 * 16  # learned from the bundle before
    # with a revocation of a later entry of the bundle: the per-leaf path, for its exact error
    leaves = [*_ONE_SHAPE[:10], make_revocation(_ONE_SHAPE[20]), *_ONE_SHAPE[10:255]]
    assert verify.scan_bundle(leaves, 0).slow is not None
    auditor = LogAuditor(ORIGIN)
    with pytest.raises(VerificationError, match="leaf 10"):
        _by_bundles(auditor, leaves)


def test_leaves_added_one_by_one_after_a_scanned_partial_bundle() -> None:
    from protocol import verify

    auditor = LogAuditor(ORIGIN)
    auditor.add_scanned(verify.scan_bundle(_ONE_SHAPE[:100], 0), lambda: _ONE_SHAPE[:100])
    # the same bundle goes on leaf by leaf: an entry, then author revocations of an entry from
    # the scanned part and of the one just added
    auditor.add(_ONE_SHAPE[100])
    auditor.add(make_revocation(_ONE_SHAPE[5]))
    auditor.add(make_revocation(_ONE_SHAPE[100]))
    with pytest.raises(VerificationError, match="not the author"):
        auditor.add(make_revocation(_ONE_SHAPE[6], author="z.example", role="author"))
    s = auditor.summary()
    assert (s.size, s.entries, s.revoked) == (103, 101, 2)
    assert verify._NO_LOOSE == {}  # the shared default was not written to


def test_ids_added_by_bundle_and_leaf_by_leaf_are_found_by_each_other() -> None:
    from protocol import verify

    # Bundle 0: 100 entries added whole, then 156 leaf by leaf; bundle 1 (whole) revokes one of
    # each kind, and a later leaf reuses an id of each kind.
    auditor = LogAuditor(ORIGIN)
    auditor.add_scanned(verify.scan_bundle(_ONE_SHAPE[:100], 0), lambda: _ONE_SHAPE[:100])
    auditor.add_many(_ONE_SHAPE[100:256])
    second = [make_revocation(_ONE_SHAPE[200]), make_revocation(_ONE_SHAPE[50]),
              *_ONE_SHAPE[256:300]]
    scanned = verify.scan_bundle(second, 256)
    assert scanned.slow is None

    def never() -> list[bytes]:
        raise AssertionError("the fast path should not need the leaves again")

    auditor.add_scanned(scanned, never)
    assert (auditor.summary().revoked, auditor.size) == (2, 302)
    for taken in (_ONE_SHAPE[150], _ONE_SHAPE[50], _ONE_SHAPE[280]):
        with pytest.raises(VerificationError, match="already used"):
            auditor.add(taken)
    with pytest.raises(VerificationError, match="already revoked"):
        auditor.add(make_revocation(_ONE_SHAPE[200]))
    auditor.add(make_revocation(_ONE_SHAPE[290]))
    assert (auditor.summary().revoked, auditor.size) == (3, 303)


def test_bundle_path_takes_the_fast_path_and_keeps_authors_across_bundles() -> None:
    from protocol.verify import scan_bundle

    entries = [x for x in _BUNDLE_POOL if isinstance(verify_record(x), Entry)][:300]
    # bundle 1 revokes, in the author role, an entry of bundle 0 and one of its own (leaf 260,
    # before the revocation at 262): both on the fast path, the author found in either table
    mine = [make_revocation(entries[3]), make_revocation(entries[260])]
    leaves = entries[:261] + mine + entries[261:263]
    scanned = [scan_bundle(leaves[i : i + 256], i) for i in range(0, len(leaves), 256)]
    assert [s.slow for s in scanned] == [None, None]
    auditor = LogAuditor(ORIGIN)

    def never() -> list[bytes]:
        raise AssertionError("the fast path should not need the leaves again")

    for s in scanned:
        auditor.add_scanned(s, never)
    summary = auditor.summary()
    assert summary.revoked == 2 and summary.size == len(leaves)
    assert summary.root_hash == merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    with pytest.raises(FormatError, match="bundle starts at leaf 0"):
        auditor.add_scanned(scanned[0], never)
    with pytest.raises(FormatError, match="multiple of 256"):
        scan_bundle(leaves[:3], 3)

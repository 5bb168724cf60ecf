"""Tests for protocol.merkle: published RFC 6962 vectors, a recursive reference, tampering."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol import merkle
from protocol.errors import FormatError, ProofError, ProtocolError

VECTORS = Path(__file__).parent / "vectors" / "merkle"
REFERENCE = json.loads((VECTORS / "reference_tree.json").read_text())
REF_LEAVES = [merkle.leaf_hash(bytes.fromhex(x)) for x in REFERENCE["leaf_inputs_hex"]]

INTERESTING_SIZES = sorted(
    {0, 1, 2, 3}
    | {p + d for p in (4, 8, 16, 64, 256, 512, 1024, 2048) for d in (-1, 0, 1)}
)


# --- a plain recursive reference implementation, straight from RFC 9162 §2.1 ---------------------


def ref_mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return d[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    return [] if m in (0, len(d)) else ref_subproof(m, d, True)


def leaves_from_seed(seed: bytes, n: int) -> list[bytes]:
    return [hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(n)]


def flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


def b64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


# --- RFC 6962 reference tree (transparency-dev/merkle testonly + proof tables) -------------------


def test_empty_root_and_hash_functions() -> None:
    assert merkle.EMPTY_ROOT.hex() == REFERENCE["root_hashes_hex_by_size"][0]
    assert merkle.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(
        b"\x01" + b"a" * 32 + b"b" * 32
    ).digest()
    assert merkle.HASH_SIZE == 32


@pytest.mark.parametrize("size", range(9))
def test_reference_roots(size: int) -> None:
    want = bytes.fromhex(REFERENCE["root_hashes_hex_by_size"][size])
    assert merkle.root_from_leaf_hashes(REF_LEAVES[:size]) == want
    cr = merkle.CompactRange()
    cr.extend(REF_LEAVES[:size])
    assert cr.root() == want
    assert ref_mth(REF_LEAVES[:size]) == want


def test_reference_node_hashes_from_compact_range_appends() -> None:
    cr = merkle.CompactRange()
    created: dict[tuple[int, int], bytes] = {}
    for leaf in REF_LEAVES:
        for level, index, h in cr.append(leaf):
            assert (level, index) not in created
            created[(level, index)] = h
    want = {
        (level, index): bytes.fromhex(h)
        for level, row in enumerate(REFERENCE["node_hashes_hex_by_level"])
        for index, h in enumerate(row)
    }
    assert created == want


@pytest.mark.parametrize("case", REFERENCE["inclusion_proofs"], ids=lambda c: str(c))
def test_reference_inclusion_proofs(case: dict[str, Any]) -> None:
    index, size = case["leaf_index"], case["tree_size"]
    want = [bytes.fromhex(h) for h in case["proof_hex"]]
    assert merkle.inclusion_proof(REF_LEAVES, index, size) == want
    root = bytes.fromhex(REFERENCE["root_hashes_hex_by_size"][size])
    merkle.verify_inclusion(REF_LEAVES[index], index, size, want, root)


@pytest.mark.parametrize("case", REFERENCE["consistency_proofs"], ids=lambda c: str(c))
def test_reference_consistency_proofs(case: dict[str, Any]) -> None:
    old, new = case["old_size"], case["new_size"]
    want = [bytes.fromhex(h) for h in case["proof_hex"]]
    assert merkle.consistency_proof(REF_LEAVES, old, new) == want
    roots = REFERENCE["root_hashes_hex_by_size"]
    merkle.verify_consistency(old, new, bytes.fromhex(roots[old]), bytes.fromhex(roots[new]), want)


# --- transparency-dev/merkle testdata JSON files -------------------------------------------------


def _vector_files(kind: str) -> list[Path]:
    files = sorted((VECTORS / kind).glob("*/*.json"))
    assert files, f"no {kind} vectors found"
    return files


def _proof(value: list[str] | None) -> list[bytes]:
    return [b64(h) for h in value or []]


@pytest.mark.parametrize(
    "path", _vector_files("inclusion"), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_inclusion_vector_file(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (b64(v["leafHash"]), v["leafIdx"], v["treeSize"], _proof(v["proof"]), b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProtocolError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)
        # Our generator reproduces the published proof over the reference leaves.
        assert merkle.inclusion_proof(REF_LEAVES, v["leafIdx"], v["treeSize"]) == args[3]
        _check_inclusion_corruptions(*args)


@pytest.mark.parametrize(
    "path", _vector_files("consistency"), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_consistency_vector_file(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (v["size1"], v["size2"], b64(v["root1"]), b64(v["root2"]), _proof(v["proof"]))
    if v["wantErr"]:
        with pytest.raises(ProtocolError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)
        assert merkle.consistency_proof(REF_LEAVES, v["size1"], v["size2"]) == args[4]
        if args[4]:
            _check_consistency_corruptions(*args)


SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _check_inclusion_corruptions(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    """The probes upstream derives from each happy path (proof/verify_test.go), all must fail."""
    probes: list[tuple[Any, ...]] = [
        (leaf, index - 1, size, proof, root),
        (leaf, index + 1, size, proof, root),
        (leaf, index ^ 2, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size // 2, proof, root),
        (b"WrongLeaf", index, size, proof, root),
        (leaf, index, size, proof, merkle.EMPTY_ROOT),
        (leaf, index, size, proof, SOME_HASH),
        (leaf, index, size, [*proof, b""], root),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [b"", *proof], root),
        (leaf, index, size, [root, *proof], root),
    ]
    for i in range(len(proof)):
        probes.append((leaf, index, size, [*proof[:i], flip(proof[i], 3), *proof[i + 1 :]], root))
    if proof:
        probes.append((leaf, index, size, proof[:-1], root))
    if len(proof) > 1:
        probes.append((leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], root))
    for probe in probes:
        with pytest.raises(ProtocolError):
            merkle.verify_inclusion(*probe)


def _check_consistency_corruptions(
    m: int, n: int, r1: bytes, r2: bytes, proof: list[bytes]
) -> None:
    probes: list[tuple[Any, ...]] = [
        (m - 1, n, r1, r2, proof),
        (m + 1, n, r1, r2, proof),
        (m ^ 2, n, r1, r2, proof),
        (m, n * 2, r1, r2, proof),
        (m, n // 2, r1, r2, proof),
        (m, n, b"WrongRoot", r2, proof),
        (m, n, r1, b"WrongRoot", proof),
        (m, n, r2, r1, proof),
        (m, n, r1, r2, []),
        (m, n, r1, r2, [*proof, b""]),
        (m, n, r1, r2, [*proof, r1]),
        (m, n, r1, r2, [*proof, r2]),
        (m, n, r1, r2, [b"", *proof]),
        (m, n, r1, r2, [r1, *proof]),
        (m, n, r1, r2, [r2, *proof]),
        (m, n, r1, r2, [proof[0], *proof]),
        (m, n, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        probes.append((m, n, r1, r2, [*proof[:i], flip(proof[i], 4), *proof[i + 1 :]]))
    for probe in probes:
        with pytest.raises(ProtocolError):
            merkle.verify_consistency(*probe)


# --- edge cases and input validation -------------------------------------------------------------


def test_inclusion_single_entry() -> None:
    h = merkle.leaf_hash(b"data")
    merkle.verify_inclusion(h, 0, 1, [], h)
    with pytest.raises(FormatError):
        merkle.verify_inclusion(b"", 0, 1, [], h)
    with pytest.raises(FormatError):
        merkle.verify_inclusion(h, 0, 1, [], b"")


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (1, 1), (-1, 5), (True, 5)])
def test_inclusion_index_outside_tree_is_format_error(index: int, size: int) -> None:
    with pytest.raises(FormatError):
        merkle.verify_inclusion(SOME_HASH, index, size, [], merkle.EMPTY_ROOT)
    with pytest.raises(FormatError):
        merkle.inclusion_proof(REF_LEAVES, index, size)


def test_inclusion_rejects_bad_hash_lengths_in_proof() -> None:
    proof = merkle.inclusion_proof(REF_LEAVES, 3, 8)
    root = merkle.root_from_leaf_hashes(REF_LEAVES)
    with pytest.raises(FormatError):
        merkle.verify_inclusion(REF_LEAVES[3], 3, 8, [proof[0][:31], *proof[1:]], root)
    with pytest.raises(FormatError):
        merkle.verify_inclusion(REF_LEAVES[3], 3, 8, [*proof[:2], proof[2] + b"\x00"], root)


def test_inclusion_overlong_proof_is_rejected_cheaply() -> None:
    with pytest.raises(ProofError):
        merkle.verify_inclusion(SOME_HASH, 0, 2, [SOME_HASH] * 10_000, SOME_HASH)


def test_consistency_edge_cases() -> None:
    e, r = merkle.EMPTY_ROOT, SOME_HASH
    merkle.verify_consistency(0, 0, e, e, [])
    merkle.verify_consistency(0, 5, e, r, [])
    merkle.verify_consistency(5, 5, r, r, [])
    bad: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (0, 0, e, r, []),  # same size, different roots
        (5, 5, r, e, []),
        (5, 5, r, r, [e]),  # equal sizes with a non-empty proof
        (0, 5, e, r, [e]),  # from the empty tree with a non-empty proof
        (0, 5, r, r, []),  # size 0 must have the empty root
        (1, 0, r, e, []),  # time travel
        (6, 5, r, r, [r]),
        (1, 2, r, e, []),  # missing proof
    ]
    for args in bad:
        with pytest.raises(ProofError):
            merkle.verify_consistency(*args)
    for args in [(-1, 2, r, r, []), (1, 2**64, r, r, []), (1, 2, r[:5], r, [r])]:
        with pytest.raises(FormatError):
            merkle.verify_consistency(*args)


def test_generation_argument_validation() -> None:
    with pytest.raises(FormatError):
        merkle.inclusion_proof(REF_LEAVES, 0, 9)  # more than given
    with pytest.raises(FormatError):
        merkle.consistency_proof(REF_LEAVES, 5, 4)
    with pytest.raises(FormatError):
        merkle.root_from_leaf_hashes([b"short"])
    assert merkle.consistency_proof(REF_LEAVES, 0) == []
    assert merkle.consistency_proof(REF_LEAVES, 8) == []
    with pytest.raises(FormatError):
        merkle.range_nodes(1, 3)  # not a subtree of the RFC tree
    with pytest.raises(FormatError):
        merkle.root_from_concatenated_hashes(b"x" * 33)


def test_compact_range_validation_and_node_ids() -> None:
    assert merkle.CompactRange.node_ids(0) == []
    assert merkle.CompactRange.node_ids(6) == [(2, 0), (1, 2)]
    assert merkle.CompactRange.node_ids(7) == [(2, 0), (1, 2), (0, 6)]
    with pytest.raises(FormatError):
        merkle.CompactRange(3, [SOME_HASH])
    with pytest.raises(FormatError):
        merkle.CompactRange(1, [b"x"])
    cr = merkle.CompactRange(2, [SOME_HASH])
    assert cr.size == 2 and cr.hashes == (SOME_HASH,)
    assert cr.root() == SOME_HASH
    with pytest.raises(FormatError):
        cr.append(b"x")
    with pytest.raises(FormatError):
        cr.extend([SOME_HASH, b"bad"])
    assert cr.size == 3  # the good leaf before the bad one was kept
    assert merkle.CompactRange().root() == merkle.EMPTY_ROOT


# --- properties against the reference ------------------------------------------------------------

sizes = st.one_of(st.sampled_from(INTERESTING_SIZES), st.integers(0, 3000))
seeds = st.binary(min_size=4, max_size=4)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, size=sizes)
def test_root_and_compact_range_match_reference(seed: bytes, size: int) -> None:
    leaves = leaves_from_seed(seed, size)
    root = merkle.root_from_leaf_hashes(leaves)
    assert root == ref_mth(leaves)
    cr = merkle.CompactRange()
    cr.extend(leaves)
    assert cr.root() == root
    assert cr.size == size
    assert len(cr.hashes) == size.bit_count()
    rebuilt = merkle.CompactRange(size, cr.hashes)
    assert rebuilt == cr
    ids = merkle.CompactRange.node_ids(size)
    assert [ref_mth(leaves[i << lvl : (i + 1) << lvl]) for lvl, i in ids] == list(cr.hashes)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, size=st.integers(0, 600))
def test_compact_range_append_reports_every_complete_node(seed: bytes, size: int) -> None:
    leaves = leaves_from_seed(seed, size)
    cr = merkle.CompactRange()
    seen: dict[tuple[int, int], bytes] = {}
    for leaf in leaves:
        for level, index, h in cr.append(leaf):
            seen[(level, index)] = h
    want = {
        (level, index): ref_mth(leaves[index << level : (index + 1) << level])
        for level in range(size.bit_length())
        for index in range(size >> level)
    }
    assert seen == want
    assert cr.root() == ref_mth(leaves)


def _directions(index: int, size: int) -> list[bool]:
    """Whether each inclusion proof element is a left sibling: the shape of the computation."""
    return [start < index for start, _ in merkle.inclusion_ranges(index, size)]


@settings(max_examples=80, deadline=None)
@given(seed=seeds, size=sizes.filter(lambda s: s > 0), data=st.data())
def test_inclusion_proofs_verify_and_tampering_fails(seed: bytes, size: int, data: Any) -> None:
    leaves = leaves_from_seed(seed, size)
    root = merkle.root_from_leaf_hashes(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = merkle.inclusion_proof(leaves, index)
    assert proof == ref_path(index, leaves)
    merkle.verify_inclusion(leaves[index], index, size, proof, root)
    assert merkle.root_from_inclusion(leaves[index], index, size, proof) == root

    if proof:
        pos = data.draw(st.integers(0, len(proof) - 1), label="element")
        bit = data.draw(st.integers(0, 7), label="bit")
        bad = [*proof[:pos], flip(proof[pos], bit), *proof[pos + 1 :]]
        with pytest.raises(ProofError):
            merkle.verify_inclusion(leaves[index], index, size, bad, root)
        with pytest.raises(ProofError):
            merkle.verify_inclusion(leaves[index], index, size, proof[:-1], root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaves[index], index, size, proof, flip(root))
    with pytest.raises(ProofError):
        merkle.verify_inclusion(flip(leaves[index]), index, size, proof, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaves[index], index, size, [*proof, SOME_HASH], root)

    other = data.draw(st.integers(0, size - 1), label="other index")
    assume(other != index)
    with pytest.raises(ProofError):  # a leaf's path through a tree is unique to its index
        merkle.verify_inclusion(leaves[index], other, size, proof, root)

    # A different size verifies only when it gives the proof exactly the same shape (the size is
    # bound by the signed checkpoint, not by the proof); otherwise it must fail.
    other_size = data.draw(st.integers(index + 1, 2 * size + 2), label="other size")
    if other_size != size:
        if _directions(index, other_size) == _directions(index, size):
            merkle.verify_inclusion(leaves[index], index, other_size, proof, root)
        else:
            with pytest.raises(ProofError):
                merkle.verify_inclusion(leaves[index], index, other_size, proof, root)


def _consistency_shape(m: int, n: int) -> tuple[bool, list[bool]]:
    """(old root prepended?, left/right of each element after the seed) for PROOF(m, D[n])."""
    ranges = merkle.consistency_ranges(m, n)
    if m & (m - 1) == 0:
        ranges = [(0, m), *ranges]
    start = ranges[0][0]
    directions = []
    for a, _ in ranges[1:]:
        directions.append(a < start)
        start = min(start, a)
    return m & (m - 1) == 0, directions


@settings(max_examples=80, deadline=None)
@given(seed=seeds, new_size=sizes.filter(lambda s: s > 1), data=st.data())
def test_consistency_proofs_verify_and_tampering_fails(
    seed: bytes, new_size: int, data: Any
) -> None:
    leaves = leaves_from_seed(seed, new_size)
    old_size = data.draw(st.integers(1, new_size - 1), label="old size")
    old_root = merkle.root_from_leaf_hashes(leaves[:old_size])
    new_root = merkle.root_from_leaf_hashes(leaves)
    proof = merkle.consistency_proof(leaves, old_size)
    assert proof == ref_proof(old_size, leaves)
    merkle.verify_consistency(old_size, new_size, old_root, new_root, proof)

    pos = data.draw(st.integers(0, len(proof) - 1), label="element")
    bad = [*proof[:pos], flip(proof[pos], data.draw(st.integers(0, 7))), *proof[pos + 1 :]]
    with pytest.raises(ProofError):
        merkle.verify_consistency(old_size, new_size, old_root, new_root, bad)
    with pytest.raises(ProofError):
        merkle.verify_consistency(old_size, new_size, flip(old_root), new_root, proof)
    with pytest.raises(ProofError):
        merkle.verify_consistency(old_size, new_size, old_root, flip(new_root), proof)
    with pytest.raises(ProofError):
        merkle.verify_consistency(old_size, new_size, old_root, new_root, proof[:-1])
    with pytest.raises(ProofError):
        merkle.verify_consistency(old_size, new_size, old_root, new_root, [*proof, SOME_HASH])

    m2 = data.draw(st.integers(1, 2 * new_size), label="other old size")
    n2 = data.draw(st.integers(1, 2 * new_size), label="other new size")
    assume((m2, n2) != (old_size, new_size))
    if m2 < n2 and _consistency_shape(m2, n2) == _consistency_shape(old_size, new_size):
        merkle.verify_consistency(m2, n2, old_root, new_root, proof)
    else:
        with pytest.raises(ProofError):
            merkle.verify_consistency(m2, n2, old_root, new_root, proof)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, size=sizes.filter(lambda s: s > 0), data=st.data())
def test_ranges_decompose_into_nodes(seed: bytes, size: int, data: Any) -> None:
    leaves = leaves_from_seed(seed, size)
    start = data.draw(st.integers(0, size - 1))
    for a, b in [*merkle.inclusion_ranges(start, size), *merkle.consistency_ranges(start, size)]:
        nodes = merkle.range_nodes(a, b)
        hashes = [ref_mth(leaves[i << lvl : (i + 1) << lvl]) for lvl, i in nodes]
        assert merkle.fold_right_edge(hashes) == ref_mth(leaves[a:b])


@settings(max_examples=80, deadline=None)
@given(
    seed=seeds,
    level=st.integers(0, 6),
    blocks=st.lists(st.integers(0, 6), max_size=6),
    tail=st.integers(0, 5),
)
def test_append_subtree_equals_extend_with_its_leaves(
    seed: bytes, level: int, blocks: list[int], tail: int
) -> None:
    # Aligned subtrees of varying heights (each at most as high as the size allows), then single
    # leaves: the range, its hashes and its root are those of extending leaf by leaf.
    total = sum(1 << b for b in blocks) + tail + (1 << level)
    leaves = leaves_from_seed(seed, total)
    by_leaf, by_subtree = merkle.CompactRange(), merkle.CompactRange()
    pos = 0
    for b in [level, *blocks]:
        width = 1 << b
        if pos % width:
            by_subtree.extend(leaves[pos : pos + width])
        else:
            by_subtree.append_subtree(b, ref_mth(leaves[pos : pos + width]))
        by_leaf.extend(leaves[pos : pos + width])
        pos += width
        assert by_subtree == by_leaf
    by_subtree.extend(leaves[pos:])
    by_leaf.extend(leaves[pos:])
    assert by_subtree == by_leaf
    assert by_subtree.root() == ref_mth(leaves)


def test_append_subtree_rejects_unaligned_and_malformed_input() -> None:
    cr = merkle.CompactRange()
    cr.extend(REF_LEAVES[:3])
    with pytest.raises(FormatError, match="not aligned"):
        cr.append_subtree(1, SOME_HASH)
    with pytest.raises(FormatError):
        cr.append_subtree(0, b"short")
    with pytest.raises(FormatError):
        cr.append_subtree(-1, SOME_HASH)
    with pytest.raises(FormatError):
        cr.append_subtree(True, SOME_HASH)
    assert cr.size == 3  # nothing was appended
    cr.append_subtree(0, SOME_HASH)
    cr.append_subtree(2, SOME_HASH)
    assert cr.size == 8 and len(cr.hashes) == 1
    full = merkle.CompactRange((1 << 64) - 2, [SOME_HASH] * 63)
    with pytest.raises(FormatError, match="full"):
        full.append_subtree(1, SOME_HASH)

"""Tests for protocol.mirror: checking a partner's tiles against its root, then its bundles."""

from __future__ import annotations

import functools
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import merkle, mirror, tiles
from protocol.errors import FormatError, ProofError
from protocol.mirror import (
    VerifiedTree,
    mirror_tiles_needed,
    verify_bundle,
    verify_bundle_hashes,
    verify_tree_tiles,
)
from protocol.tiles import TileRef

INTERESTING = [0, 1, 2, 255, 256, 257, 511, 512, 513, 65535, 65536, 65537, 70000]
sizes = st.one_of(st.sampled_from(INTERESTING), st.integers(0, 3000))


def leaves_of(seed: int, size: int) -> list[bytes]:
    """Synthetic leaf data: random-looking bytes of varying length."""
    return [hashlib.sha256(b"%d/%d" % (seed, i)).digest()[: 1 + i % 32] for i in range(size)]


@functools.lru_cache(maxsize=64)
def log(seed: int, size: int) -> tuple[list[bytes], list[bytes], dict[TileRef, bytes], bytes]:
    """(leaves, leaf hashes, every tile, root) of a log built with the tile writer."""
    leaves = leaves_of(seed, size)
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    # Built in two appends so that the writer's edge handling is exercised too.
    half = size // 3
    first = tiles.update_tiles(0, {}, hashes[:half])
    edge = {ref: first[ref] for ref in tiles.right_edge_tiles(half)}
    all_tiles = {**first, **tiles.update_tiles(half, edge, hashes[half:])}
    current = set(tiles.tiles_for_size(size))
    return (
        leaves,
        hashes,
        {r: t for r, t in all_tiles.items() if r in current},
        merkle.root_from_leaf_hashes(hashes),
    )


def needed(size: int, seed: int = 1) -> dict[TileRef, bytes]:
    _, _, all_tiles, _ = log(seed, size)
    return {ref: all_tiles[ref] for ref in mirror_tiles_needed(size)}


# --- mirror_tiles_needed --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [*INTERESTING, 256 * 256 * 256 + 5])
def test_tiles_needed_are_the_upper_levels_and_the_partial_level0_tile(size: int) -> None:
    expected = [r for r in tiles.tiles_for_size(size) if r.level >= 1 or not r.is_full]
    assert sorted(mirror_tiles_needed(size), key=lambda r: (r.level, r.n)) == expected
    assert len(mirror_tiles_needed(size)) == len(set(mirror_tiles_needed(size)))


def test_tiles_needed_rejects_bad_sizes() -> None:
    for bad in (-1, 1 << 64, True, 1.0):
        with pytest.raises(FormatError):
            mirror_tiles_needed(bad)  # type: ignore[arg-type]


# --- honest trees ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(size=sizes)
def test_honest_tiles_verify_and_give_the_blocks(size: int) -> None:
    _, hashes, _, root = log(1, size)
    tree = verify_tree_tiles(size, root, needed(size))
    assert (tree.size, tree.root) == (size, root)
    full = size // 256
    assert tree.block_hashes == tuple(
        merkle.root_from_leaf_hashes(hashes[n * 256 : (n + 1) * 256]) for n in range(full)
    )
    assert tree.tail == tuple(hashes[full * 256 :])
    assert tree.bundle_count == full + (1 if size % 256 else 0)


@pytest.mark.parametrize("size", INTERESTING)
def test_honest_bundles_verify(size: int) -> None:
    leaves, hashes, _, root = log(1, size)
    tree = verify_tree_tiles(size, root, needed(size))
    got: list[bytes] = []
    for n in range(tree.bundle_count):
        got += verify_bundle(tree, n, leaves[n * 256 : (n + 1) * 256])
    assert got == hashes


@settings(max_examples=60, deadline=None)
@given(size=sizes, data=st.data())
def test_resumed_bundles_verify(size: int, data: st.DataObject) -> None:
    leaves, hashes, _, root = log(1, size)
    if size == 0:
        return
    tree = verify_tree_tiles(size, root, needed(size))
    n = data.draw(st.integers(0, tree.bundle_count - 1))
    block = leaves[n * 256 : (n + 1) * 256]
    held = data.draw(st.integers(0, len(block)))
    prefix = hashes[n * 256 : n * 256 + held]
    assert (
        verify_bundle(tree, n, block[held:], prefix=prefix)
        == hashes[n * 256 + held : (n + 1) * 256]
    )


def test_a_wider_tile_stands_in_for_a_partial_one() -> None:
    # A partner that has grown since the checkpoint serves wider tiles at the same positions.
    size, bigger = 65537 + 300, 65537 + 300 + 700
    leaves, hashes, _, root = log(1, size)
    later = tiles.update_tiles(0, {}, [merkle.leaf_hash(x) for x in leaves + leaves_of(9, 700)])
    tree = verify_tree_tiles(size, root, later)
    assert tree.tail == tuple(hashes[size // 256 * 256 :])
    assert bigger > size


# --- dishonest trees ------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(size=st.sampled_from([1, 255, 256, 257, 600, 65535, 65536, 65537, 70000]), data=st.data())
def test_any_flipped_tile_byte_is_caught(size: int, data: st.DataObject) -> None:
    _, _, _, root = log(1, size)
    given_tiles = needed(size)
    ref = data.draw(st.sampled_from(sorted(given_tiles, key=lambda r: (r.level, r.n))))
    pos = data.draw(st.integers(0, len(given_tiles[ref]) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(given_tiles[ref])
    tampered[pos] ^= 1 << bit
    given_tiles[ref] = bytes(tampered)
    with pytest.raises(ProofError) as e:
        verify_tree_tiles(size, root, given_tiles)
    assert "tile" in e.value.message


def test_a_flipped_lower_tile_is_named_against_its_parent() -> None:
    size = 70000
    _, _, _, root = log(1, size)
    given_tiles = needed(size)
    ref = TileRef(1, 0, 256)
    given_tiles[ref] = bytes([given_tiles[ref][0] ^ 1]) + given_tiles[ref][1:]
    with pytest.raises(
        ProofError, match=r"tile/1/000 does not hash to entry 0 of tile tile/2/000.p/1"
    ):
        verify_tree_tiles(size, root, given_tiles)


@pytest.mark.parametrize("size", [1, 255, 256, 257, 65536, 70000])
def test_every_dropped_tile_is_a_format_error(size: int) -> None:
    _, _, _, root = log(1, size)
    for ref in mirror_tiles_needed(size):
        given_tiles = needed(size)
        del given_tiles[ref]
        with pytest.raises(FormatError, match=ref.path()):
            verify_tree_tiles(size, root, given_tiles)


@pytest.mark.parametrize("size", [1, 257, 65536, 70000])
def test_truncated_or_padded_tiles_are_format_errors(size: int) -> None:
    _, _, _, root = log(1, size)
    for ref in mirror_tiles_needed(size):
        for changed in (needed(size)[ref][:-1], needed(size)[ref] + b"\0"):
            given_tiles = needed(size)
            given_tiles[ref] = changed
            with pytest.raises(FormatError):
                verify_tree_tiles(size, root, given_tiles)


@pytest.mark.parametrize("size", [1, 255, 256, 257, 65535, 65536, 65537, 70000])
def test_tiles_of_another_tree_or_a_wrong_root_are_refused(size: int) -> None:
    _, _, _, root = log(1, size)
    _, _, _, other_root = log(2, size)
    with pytest.raises(ProofError):
        verify_tree_tiles(size, root, needed(size, seed=2))
    with pytest.raises(ProofError):
        verify_tree_tiles(size, other_root, needed(size))
    # One tile swapped in from the other tree.
    for ref in mirror_tiles_needed(size):
        mixed = needed(size)
        mixed[ref] = needed(size, seed=2)[ref]
        with pytest.raises(ProofError):
            verify_tree_tiles(size, root, mixed)


def test_empty_tree() -> None:
    assert verify_tree_tiles(0, merkle.EMPTY_ROOT, {}) == VerifiedTree(0, merkle.EMPTY_ROOT, (), ())
    with pytest.raises(ProofError):
        verify_tree_tiles(0, b"\0" * 32, {})


def test_bad_arguments() -> None:
    with pytest.raises(FormatError):
        verify_tree_tiles(-1, merkle.EMPTY_ROOT, {})
    with pytest.raises(FormatError):
        verify_tree_tiles(0, b"short", {})


def test_verified_tree_cannot_be_built_unverified() -> None:
    _, hashes, _, root = log(1, 600)
    tree = verify_tree_tiles(600, root, needed(600))
    with pytest.raises(ProofError):
        VerifiedTree(600, b"\1" * 32, tree.block_hashes, tree.tail)
    with pytest.raises(ProofError):
        VerifiedTree(600, root, tree.block_hashes[::-1], tree.tail)
    with pytest.raises(FormatError):
        VerifiedTree(600, root, tree.block_hashes[:1], tree.tail)
    with pytest.raises(FormatError):
        VerifiedTree(600, root, tree.block_hashes, (*tree.tail, hashes[0]))
    with pytest.raises(FormatError):
        VerifiedTree(600, root, list(tree.block_hashes), tree.tail)  # type: ignore[arg-type]


# --- dishonest bundles ----------------------------------------------------------------------------

BUNDLE_SIZES = [1, 255, 256, 257, 600, 65537]


def _variants(block: list[bytes], other: bytes) -> dict[str, list[bytes]]:
    changed = list(block)
    changed[len(block) // 2] = changed[len(block) // 2] + b"!"
    out = {
        "changed": changed,
        "missing": block[:-1],
        "extra": [*block, other],
        "replaced": [*block[:-1], other],
    }
    if len(block) > 1:
        out["reordered"] = [block[1], block[0], *block[2:]]
    return out


def _joined(leaves: list[bytes]) -> bytes:
    return b"".join(merkle.leaf_hash(x) for x in leaves)


@pytest.mark.parametrize("size", BUNDLE_SIZES)
def test_bad_bundles_are_refused(size: int) -> None:
    leaves, hashes, _, root = log(1, size)
    tree = verify_tree_tiles(size, root, needed(size))
    for n in {0, tree.bundle_count - 1}:
        block = leaves[n * 256 : (n + 1) * 256]
        # the good block passes both ways: leaves here, or hashes computed elsewhere
        assert b"".join(verify_bundle(tree, n, block)) == _joined(block)
        verify_bundle_hashes(tree, n, _joined(block))
        for name, bad in _variants(block, b"not-a-leaf-of-this-block").items():
            with pytest.raises(ProofError, match=f"entry bundle {n}"):
                verify_bundle(tree, n, bad)
            with pytest.raises(ProofError, match=f"entry bundle {n}"):
                verify_bundle_hashes(tree, n, _joined(bad))
            # Resumed mid-block: the same faults in the new part.
            held = 1 if len(block) > 2 else 0
            if held and name != "reordered":
                prefix = hashes[n * 256 : n * 256 + held]
                with pytest.raises(ProofError):
                    verify_bundle(tree, n, bad[held:], prefix=prefix)
                with pytest.raises(ProofError):
                    verify_bundle_hashes(tree, n, _joined(bad[held:]), prefix=prefix)
        # A wrong stored prefix is caught too.
        if len(block) > 1:
            wrong = [hashes[n * 256 + 1]]
            with pytest.raises(ProofError):
                verify_bundle(tree, n, block[1:], prefix=wrong)


@settings(max_examples=60, deadline=None)
@given(size=st.sampled_from(BUNDLE_SIZES), data=st.data())
def test_any_changed_leaf_byte_is_caught(size: int, data: st.DataObject) -> None:
    leaves, _, _, root = log(1, size)
    tree = verify_tree_tiles(size, root, needed(size))
    n = data.draw(st.integers(0, tree.bundle_count - 1))
    block = list(leaves[n * 256 : (n + 1) * 256])
    i = data.draw(st.integers(0, len(block) - 1))
    pos = data.draw(st.integers(0, len(block[i]) - 1))
    tampered = bytearray(block[i])
    tampered[pos] ^= 1 << data.draw(st.integers(0, 7))
    block[i] = bytes(tampered)
    with pytest.raises(ProofError):
        verify_bundle(tree, n, block)


def test_bundle_arguments() -> None:
    leaves, _, _, root = log(1, 600)
    tree = verify_tree_tiles(600, root, needed(600))
    for n in (-1, 3, True, "0"):
        with pytest.raises(FormatError):
            verify_bundle(tree, n, leaves[:256])  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        verify_bundle(tree, 0, ["text", *leaves[1:256]])  # type: ignore[list-item]
    with pytest.raises(FormatError):
        verify_bundle(tree, 0, leaves[1:256], prefix=[b"short"])
    with pytest.raises(FormatError):
        verify_bundle("tree", 0, leaves[:256])  # type: ignore[arg-type]
    good = _joined(leaves[:256])
    for bad_hashes in (good[:-1], list(good), good.hex()):
        with pytest.raises(FormatError, match="32-byte"):
            verify_bundle_hashes(tree, 0, bad_hashes)  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        verify_bundle_hashes(tree, 3, good)
    with pytest.raises(FormatError):
        verify_bundle_hashes("tree", 0, good)  # type: ignore[arg-type]
    assert tree.bundle_ref(2) == TileRef(0, 2, 88, is_entries=True)
    assert tree.bundle_ref(0).is_full


def test_module_exports() -> None:
    assert set(mirror.__all__) == {
        "VerifiedTree",
        "mirror_tiles_needed",
        "verify_bundle",
        "verify_bundle_hashes",
        "verify_tree_tiles",
    }

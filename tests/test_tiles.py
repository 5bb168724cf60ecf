"""Tests for protocol.tiles: tlog-tiles paths, tile contents, tile writer, proofs, entry bundles."""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import merkle, tiles
from protocol.errors import FormatError
from protocol.tiles import TileRef


def leaves_from_seed(seed: bytes, n: int) -> list[bytes]:
    return [hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(n)]


def definition_tile(leaves: list[bytes], ref: TileRef) -> bytes:
    """Entry i of tile (L, n) is MTH(D[(n*256 + i) * 256**L : (n*256 + i + 1) * 256**L])."""
    span = 256**ref.level
    first = ref.n * 256
    return b"".join(
        merkle.root_from_leaf_hashes(leaves[(first + i) * span : (first + i + 1) * span])
        for i in range(ref.width)
    )


INTERESTING = [0, 1, 2, 3, 255, 256, 257, 511, 512, 513, 1000, 65535, 65536, 65537, 70000]
sizes = st.one_of(st.sampled_from([s for s in INTERESTING if s <= 3000]), st.integers(0, 3000))
seeds = st.binary(min_size=4, max_size=4)

_CACHE: dict[tuple[bytes, int], tuple[list[bytes], dict[TileRef, bytes]]] = {}


def tree(seed: bytes, size: int) -> tuple[list[bytes], dict[TileRef, bytes]]:
    key = (seed, size)
    if key not in _CACHE:
        leaves = leaves_from_seed(seed, size)
        _CACHE.clear()  # keep memory flat; hypothesis rarely repeats a key anyway
        _CACHE[key] = (leaves, tiles.update_tiles(0, {}, leaves))
    return _CACHE[key]


# --- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "path"),
    [
        (TileRef(0, 0, 256), "tile/0/000"),
        (TileRef(0, 1234067, 256), "tile/0/x001/x234/067"),
        (TileRef(0, 1234, 7), "tile/0/x001/234.p/7"),
        (TileRef(63, 1000, 255), "tile/63/x001/000.p/255"),
        (TileRef(2, 999, 1), "tile/2/999.p/1"),
        (TileRef(0, 0, 256, is_entries=True), "tile/entries/000"),
        (TileRef(0, 12, 100, is_entries=True), "tile/entries/012.p/100"),
        (TileRef(0, 2**64 - 1, 256), "tile/0/x018/x446/x744/x073/x709/x551/615"),
    ],
)
def test_known_paths(ref: TileRef, path: str) -> None:
    assert ref.path() == path
    assert tiles.parse_tile_path(path) == ref


@pytest.mark.parametrize(
    "path",
    [
        "",
        "tile/0",
        "tile/0/",
        "/tile/0/000",
        "tile/0/000/",
        "tile//000",
        "tile/00/000",
        "tile/01/000",
        "tile/64/000",
        "tile/-1/000",
        "tile/+1/000",
        "tile/0/0",
        "tile/0/00",
        "tile/0/0000",
        "tile/0/x000",
        "tile/0/x000/001",  # non-minimal: 1 is 001
        "tile/0/x000/x001/000",
        "tile/0/001/002",  # missing x prefix
        "tile/0/X001/002",
        "tile/0/xx01/002",
        "tile/0/000.p/0",
        "tile/0/000.p/00",
        "tile/0/000.p/07",
        "tile/0/000.p/256",
        "tile/0/000.p/1000",
        "tile/0/000.p/",
        "tile/0/000.p",
        "tile/0/000.P/5",
        "tile/0/000.p/5/",
        "tile/0/000\n",
        "tile/0/000 ",
        "tile/0/\u0660\u0660\u0660",  # Arabic-Indic digits are not ASCII digits
        "tile/\u0661/000",
        "tile/entry/000",
        "tile/entries/0/000",
        "tile/entries/x000/000",
        "tiles/0/000",
        "tile/0/x018/x446/x744/x073/x709/x551/616",  # 2**64: beyond uint64
    ],
)
def test_junk_paths_are_rejected(path: str) -> None:
    with pytest.raises(FormatError):
        tiles.parse_tile_path(path)


tile_refs = st.builds(
    TileRef,
    level=st.integers(0, 63),
    n=st.one_of(st.integers(0, 2000), st.integers(0, 2**64 - 1)),
    width=st.one_of(st.just(256), st.integers(1, 256)),
    is_entries=st.just(False),
) | st.builds(
    TileRef,
    level=st.just(0),
    n=st.integers(0, 2**40),
    width=st.integers(1, 256),
    is_entries=st.just(True),
)


@given(tile_refs)
def test_path_round_trip(ref: TileRef) -> None:
    assert tiles.parse_tile_path(ref.path()) == ref


@given(st.text(alphabet="tile/entrsx.p0123456789\u0660", max_size=40))
def test_arbitrary_text_parses_canonically_or_raises(text: str) -> None:
    try:
        ref = tiles.parse_tile_path(text)
    except FormatError:
        return
    assert ref.path() == text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"level": 64, "n": 0, "width": 256},
        {"level": -1, "n": 0, "width": 256},
        {"level": 0, "n": -1, "width": 256},
        {"level": 0, "n": 2**64, "width": 256},
        {"level": 0, "n": 0, "width": 0},
        {"level": 0, "n": 0, "width": 257},
        {"level": 1, "n": 0, "width": 256, "is_entries": True},
        {"level": True, "n": 0, "width": 256},
    ],
)
def test_tile_ref_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(FormatError):
        TileRef(**kwargs)


# --- tile arithmetic -----------------------------------------------------------------------------


def test_spec_example_70000() -> None:
    refs = tiles.tiles_for_size(70000)
    full0 = [r for r in refs if r.level == 0 and r.is_full]
    assert [r.n for r in full0] == list(range(273))
    rest = [r for r in refs if not (r.level == 0 and r.is_full)]
    assert rest == [TileRef(0, 273, 112), TileRef(1, 0, 256), TileRef(1, 1, 17), TileRef(2, 0, 1)]
    edge = [TileRef(0, 273, 112), TileRef(1, 1, 17), TileRef(2, 0, 1)]
    assert tiles.right_edge_tiles(70000) == edge


def test_spec_example_256() -> None:
    assert tiles.tiles_for_size(256) == [TileRef(0, 0, 256), TileRef(1, 0, 1)]
    assert tiles.right_edge_tiles(256) == [TileRef(1, 0, 1)]
    assert tiles.tiles_for_size(0) == [] and tiles.right_edge_tiles(0) == []


def test_tile_for_node() -> None:
    assert tiles.tile_for_node(0, 5, 6) == (TileRef(0, 0, 6), 5)
    assert tiles.tile_for_node(3, 1, 70000) == (TileRef(0, 0, 256), 8)
    assert tiles.tile_for_node(8, 0, 70000) == (TileRef(1, 0, 256), 0)
    assert tiles.tile_for_node(9, 135, 70000) == (TileRef(1, 1, 17), 14)
    assert tiles.tile_for_node(16, 0, 70000) == (TileRef(2, 0, 1), 0)
    with pytest.raises(FormatError):
        tiles.tile_for_node(0, 6, 6)  # leaf 6 does not exist yet
    with pytest.raises(FormatError):
        tiles.tile_for_node(1, 2, 5)  # node covering leaves 4..5 is incomplete at size 5


@settings(max_examples=40, deadline=None)
@given(seed=seeds, size=sizes)
def test_tiles_match_definition(seed: bytes, size: int) -> None:
    leaves, written = tree(seed, size)
    assert set(written) == set(tiles.tiles_for_size(size))
    for ref, data in written.items():
        assert data == definition_tile(leaves, ref), ref.path()
    assert [r for r in tiles.tiles_for_size(size) if not r.is_full] == tiles.right_edge_tiles(size)


def test_large_tree_tiles_match_definition() -> None:
    leaves, written = tree(b"big!", 70000)
    assert set(written) == set(tiles.tiles_for_size(70000))
    for ref in [TileRef(0, 273, 112), TileRef(1, 0, 256), TileRef(1, 1, 17), TileRef(2, 0, 1)]:
        assert written[ref] == definition_tile(leaves, ref)
    assert tiles.root_from_tiles(70000, written) == merkle.root_from_leaf_hashes(leaves)


# --- update_tiles --------------------------------------------------------------------------------


def apply_batches(leaves: list[bytes], cuts: list[int]) -> dict[TileRef, bytes]:
    state: dict[TileRef, bytes] = {}
    pos = 0
    for cut in [*sorted(cuts), len(leaves)]:
        if cut <= pos:
            continue
        edge = {ref: state[ref] for ref in tiles.right_edge_tiles(pos)}
        changed = tiles.update_tiles(pos, edge, leaves[pos:cut])
        assert all(tiles.tile_ref_at(r.level, r.n, cut) == r for r in changed)
        state.update(changed)
        pos = cut
    return state


@settings(max_examples=40, deadline=None)
@given(seed=seeds, size=sizes, data=st.data())
def test_update_tiles_in_random_batches_equals_one_batch(seed: bytes, size: int, data: Any) -> None:
    leaves, whole = tree(seed, size)
    cuts = data.draw(st.lists(st.integers(0, size), max_size=12), label="cuts")
    state = apply_batches(leaves, cuts)
    current = set(tiles.tiles_for_size(size))
    assert {ref: state[ref] for ref in current} == whole
    # Everything else in the state is an outdated partial tile that has since grown.
    for ref in set(state) - current:
        assert not ref.is_full
        assert tiles.tile_ref_at(ref.level, ref.n, size).width > ref.width


def test_update_tiles_one_leaf_at_a_time() -> None:
    leaves, whole = tree(b"one!", 600)
    state = apply_batches(leaves, list(range(600)))
    assert {ref: state[ref] for ref in whole} == whole


def test_update_tiles_large_append_onto_existing_tree() -> None:
    leaves = [os.urandom(32) for _ in range(100_300)]
    before = tiles.update_tiles(0, {}, leaves[:300])
    edge = {ref: before[ref] for ref in tiles.right_edge_tiles(300)}
    after = tiles.update_tiles(300, edge, leaves[300:])
    assert TileRef(0, 1, 256) in after  # the old partial tile, now full
    assert tiles.root_from_tiles(len(leaves), {**before, **after}) == merkle.root_from_leaf_hashes(
        leaves
    )


def test_update_tiles_with_known_roots_gives_the_same_tiles() -> None:
    """Known level-0 roots (a sync's verified block hashes) stand in for hashing those tiles."""
    leaves = [os.urandom(32) for _ in range(1_000)]
    before = tiles.update_tiles(0, {}, leaves[:100])
    edge = {ref: before[ref] for ref in tiles.right_edge_tiles(100)}
    known = {n: merkle.root_from_leaf_hashes(leaves[n * 256 : (n + 1) * 256]) for n in (1, 2)}
    plain = tiles.update_tiles(100, edge, leaves[100:])
    assert tiles.update_tiles(100, edge, leaves[100:], known_roots=known) == plain
    # and they are used as they are, unchecked (the caller vouches): a wrong one shows up
    wrong = tiles.update_tiles(100, edge, leaves[100:], known_roots={1: b"\x01" * 32})
    assert wrong[TileRef(0, 1, 256)] == plain[TileRef(0, 1, 256)]
    assert wrong[TileRef(1, 0, 3)] != plain[TileRef(1, 0, 3)]
    with pytest.raises(FormatError, match="known root of tile 2"):
        tiles.update_tiles(100, edge, leaves[100:], known_roots={2: b"short"})


def test_update_tiles_errors() -> None:
    h = b"\x00" * 32
    assert tiles.update_tiles(5, {}, []) == {}
    with pytest.raises(FormatError):
        tiles.update_tiles(5, {}, [h])  # needs the partial tile 0/000.p/5
    with pytest.raises(FormatError):
        tiles.update_tiles(5, {TileRef(0, 0, 5): h * 4}, [h])  # wrong length
    with pytest.raises(FormatError):
        tiles.update_tiles(0, {}, [h, b"short"])
    with pytest.raises(FormatError):
        tiles.update_tiles(2**64 - 1, {}, [h])


# --- proofs and roots from tiles -----------------------------------------------------------------


def only(written: dict[TileRef, bytes], needed: set[TileRef]) -> dict[TileRef, bytes]:
    assert needed <= set(written)
    return {ref: written[ref] for ref in needed}


@settings(max_examples=60, deadline=None)
@given(seed=seeds, size=sizes, data=st.data())
def test_tile_proofs_equal_list_proofs(seed: bytes, size: int, data: Any) -> None:
    leaves, written = tree(seed, size)
    assert tiles.root_from_tiles(size, only(written, tiles.root_tiles(size))) == (
        merkle.root_from_leaf_hashes(leaves)
    )
    if size == 0:
        return
    index = data.draw(st.integers(0, size - 1), label="index")
    needed = tiles.inclusion_proof_tiles(index, size)
    got = tiles.inclusion_proof(index, size, only(written, needed))
    assert got == merkle.inclusion_proof(leaves, index)
    old = data.draw(st.integers(0, size), label="old size")
    needed = tiles.consistency_proof_tiles(old, size)
    got = tiles.consistency_proof(old, size, only(written, needed))
    assert got == merkle.consistency_proof(leaves, old)


def test_tile_proofs_at_large_size() -> None:
    leaves, written = tree(b"big!", 70000)
    for index in [0, 255, 256, 65535, 65536, 69999]:
        needed = tiles.inclusion_proof_tiles(index, 70000)
        assert tiles.inclusion_proof(index, 70000, only(written, needed)) == merkle.inclusion_proof(
            leaves, index
        )
    for old in [1, 256, 65536, 65537, 69999]:
        needed = tiles.consistency_proof_tiles(old, 70000)
        assert tiles.consistency_proof(old, 70000, only(written, needed)) == (
            merkle.consistency_proof(leaves, old)
        )


def test_older_size_falls_back_to_wider_tiles() -> None:
    # A store that keeps only the newest version of each tile can still answer for older sizes.
    leaves, newest = tree(b"wide", 900)
    assert TileRef(0, 1, 44) not in newest  # the 300-size partial tile 0/001.p/44 is now full
    assert tiles.root_from_tiles(300, newest) == merkle.root_from_leaf_hashes(leaves[:300])
    assert tiles.inclusion_proof(299, 300, newest) == merkle.inclusion_proof(leaves, 299, 300)


def test_missing_or_malformed_tiles_are_format_errors() -> None:
    _, written = tree(b"miss", 1000)
    needed = tiles.inclusion_proof_tiles(10, 1000)
    for ref in needed:
        partial = {r: d for r, d in written.items() if r != ref}
        with pytest.raises(FormatError):
            tiles.inclusion_proof(10, 1000, partial)
        corrupt = {**written, ref: written[ref][:-1]}
        with pytest.raises(FormatError):
            tiles.inclusion_proof(10, 1000, corrupt)
    with pytest.raises(FormatError):
        tiles.root_from_tiles(1000, {})
    with pytest.raises(FormatError):
        tiles.inclusion_proof(1000, 1000, written)
    assert tiles.root_from_tiles(0, {}) == merkle.EMPTY_ROOT


def test_tile_hashes() -> None:
    ref = TileRef(0, 0, 3)
    data = b"a" * 32 + b"b" * 32 + b"c" * 32
    assert tiles.tile_hashes(ref, data) == [b"a" * 32, b"b" * 32, b"c" * 32]
    with pytest.raises(FormatError):
        tiles.tile_hashes(ref, data + b"x")
    with pytest.raises(FormatError):
        tiles.tile_hashes(TileRef(0, 0, 3, is_entries=True), data)


# --- entry bundles -------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=256))
def test_entry_bundle_round_trip(entries: list[bytes]) -> None:
    data = tiles.encode_entry_bundle(entries)
    assert data == b"".join(struct.pack(">H", len(e)) + e for e in entries)
    assert tiles.decode_entry_bundle(data, len(entries)) == entries


def test_entry_bundle_limits() -> None:
    big = b"x" * 65535
    assert tiles.decode_entry_bundle(tiles.encode_entry_bundle([big]), 1) == [big]
    with pytest.raises(FormatError):
        tiles.encode_entry_bundle([big + b"x"])
    with pytest.raises(FormatError):
        tiles.encode_entry_bundle([])
    with pytest.raises(FormatError):
        tiles.encode_entry_bundle([b""] * 257)


@pytest.mark.parametrize(
    ("data", "count"),
    [
        (b"\x00\x01a\x00\x01b", 1),  # trailing entry
        (b"\x00\x01a\x00\x01b", 3),  # missing entry
        (b"\x00\x01a\x00", 2),  # truncated length
        (b"\x00\x05abc", 1),  # truncated body
        (b"\x00\x01a\xff", 1),  # trailing byte
        (b"", 1),
        (b"", 0),
        (b"\x00\x00" * 257, 257),
    ],
)
def test_entry_bundle_strict_decoding(data: bytes, count: int) -> None:
    with pytest.raises(FormatError):
        tiles.decode_entry_bundle(data, count)


def _runs_of_a_few_lengths(kinds: list[int], lengths: list[int]) -> list[bytes]:
    return [bytes([i & 0xFF]) * lengths[k] for i, k in enumerate(kinds)]


_BUNDLE_ENTRIES = st.one_of(
    st.lists(st.binary(max_size=300), min_size=1, max_size=tiles.TILE_WIDTH),
    # runs of a few lengths, as a publisher's entries and its revocations make
    st.builds(
        _runs_of_a_few_lengths,
        st.lists(st.integers(0, 2), min_size=1, max_size=tiles.TILE_WIDTH),
        st.lists(st.integers(0, 600), min_size=3, max_size=3),
    ),
)


@settings(max_examples=600, deadline=None)
@given(
    _BUNDLE_ENTRIES,
    st.integers(1, tiles.TILE_WIDTH),
    st.integers(0, 1 << 20),
    st.sampled_from(["none", "cut", "append", "flip"]),
)
def test_the_fast_bundle_split_equals_the_checked_walk(
    entries: list[bytes], count: int, where: int, change: str
) -> None:
    """decode_entry_bundle's fast path gives exactly the checked walk's entries, and declines
    (None) exactly where the walk raises: the walk then names the error."""
    data = tiles.encode_entry_bundle(entries)
    at = where % len(data)
    if change == "cut":
        data = data[:at]
    elif change == "append":
        data += bytes([where & 0xFF])
    elif change == "flip":
        data = data[:at] + bytes([data[at] ^ (1 << where % 8)]) + data[at + 1 :]
    try:
        expected: list[bytes] | None = tiles._walk_bundle(data, count)
    except FormatError:
        expected = None
    assert tiles._split_bundle(data, count) == expected
    if expected is not None:
        assert tiles.decode_entry_bundle(data, count) == expected
        assert tiles.decode_entry_bundle(bytearray(data), count) == expected  # type: ignore[arg-type]

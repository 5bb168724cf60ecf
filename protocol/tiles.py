"""C2SP tlog-tiles: tile paths, tile arithmetic, proofs and roots from tiles, and entry bundles.

A tile at level ``L`` holds up to 256 consecutive hashes of complete subtrees of tree height
``8 * L``; entry ``i`` of tile ``n`` is ``MTH(D[(n*256 + i) * 256**L : (n*256 + i + 1) * 256**L])``.
Tree heights between two tile levels are recomputed by hashing inside one tile.  Partial tiles
(width 1..255) exist only at the right edge and contain only complete subtree hashes.

Everything here is pure: the node first asks ``*_tiles()`` which tiles a computation needs, fetches
them from its store, then hands them to the matching function as a ``{TileRef: bytes}`` mapping.  A
missing tile or one of the wrong length is a :class:`~protocol.errors.FormatError`.  When an exact
partial tile is missing, a wider (preferably full) tile at the same position is used instead: a
partial tile is a prefix of every later version of it (tlog-tiles lets logs delete partial tiles
once the full one exists, and a store may keep only the newest partial tile).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protocol import merkle
from protocol.errors import FormatError

__all__ = [
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileRef",
    "consistency_proof",
    "consistency_proof_tiles",
    "decode_entry_bundle",
    "encode_entry_bundle",
    "inclusion_proof",
    "inclusion_proof_tiles",
    "parse_tile_path",
    "right_edge_tiles",
    "root_from_tiles",
    "root_tiles",
    "tile_for_node",
    "tile_hashes",
    "tile_ref_at",
    "tiles_for_size",
    "update_tiles",
]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
_MAX_LEVEL = 63
_MAX_SIZE = (1 << 64) - 1
_HASH = merkle.HASH_SIZE
_FULL_TILE_BYTES = TILE_WIDTH * _HASH
_MAX_ENTRY_LEN = 0xFFFF  # entries are uint16 length-prefixed

_TILE_PATH = re.compile(
    r"tile/(?P<level>entries|0|[1-9][0-9]?)/(?P<n>(?:x[0-9]{3}/)*[0-9]{3})(?:\.p/(?P<w>[1-9][0-9]{0,2}))?"
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TileRef:
    """One tile (or entry bundle) as it exists at some tree size: position and width.

    ``width`` is 256 for a full tile and 1..255 for a partial one.  Entry bundles use
    ``is_entries=True`` with ``level`` 0; their ``n`` and ``width`` mean the same as for level 0.
    """

    level: int
    n: int
    width: int
    is_entries: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.level) or not 0 <= self.level <= _MAX_LEVEL:
            raise FormatError("tile level must be an integer from 0 to 63", field="level")
        if not _is_int(self.n) or not 0 <= self.n <= _MAX_SIZE:
            raise FormatError("tile index must be an integer from 0 to 2**64-1", field="n")
        if not _is_int(self.width) or not 1 <= self.width <= TILE_WIDTH:
            raise FormatError("tile width must be an integer from 1 to 256", field="width")
        if not isinstance(self.is_entries, bool):
            raise FormatError("is_entries must be a bool", field="is_entries")
        if self.is_entries and self.level != 0:
            raise FormatError("entry bundles have no level; use level 0", field="level")

    @property
    def is_full(self) -> bool:
        return self.width == TILE_WIDTH

    @property
    def byte_length(self) -> int:
        """Length of a hash tile with this width (entry bundles have no fixed length)."""
        return self.width * _HASH

    def full(self) -> TileRef:
        """The full tile at the same position (what this partial tile grows into)."""
        return TileRef(self.level, self.n, TILE_WIDTH, self.is_entries)

    def path(self) -> str:
        """``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]``, per tlog-tiles."""
        digits = str(self.n)
        digits = "0" * (-len(digits) % 3) + digits
        groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
        n = "/".join([f"x{g}" for g in groups[:-1]] + groups[-1:])
        level = "entries" if self.is_entries else str(self.level)
        suffix = "" if self.is_full else f".p/{self.width}"
        return f"tile/{level}/{n}{suffix}"


def parse_tile_path(path: str) -> TileRef:
    """Parse a tile or entry-bundle path; anything but the one canonical spelling is rejected.

    The canonical check (re-encoding and comparing) is what rejects non-minimal index groups such
    as ``x000/001``; the pattern rejects everything else (leading zeros in the level or width,
    ``.p/0``, ``.p/256``, missing ``x`` prefixes, trailing slashes, non-ASCII digits).
    """
    if not isinstance(path, str):
        raise FormatError("tile path must be a string", field="path")
    m = _TILE_PATH.fullmatch(path)
    if m is None:
        raise FormatError(f"not a tile path: {path!r}", field="path")
    width = int(m["w"]) if m["w"] is not None else TILE_WIDTH
    if m["w"] is not None and width >= TILE_WIDTH:
        raise FormatError(f"partial tile width must be 1..255: {path!r}", field="path")
    is_entries = m["level"] == "entries"
    level = 0 if is_entries else int(m["level"])
    ref = TileRef(level, int(m["n"].replace("x", "").replace("/", "")), width, is_entries)
    if ref.path() != path:
        raise FormatError(f"non-canonical tile path: {path!r}", field="path")
    return ref


def _check_size(size: int, field: str = "size") -> None:
    if not _is_int(size) or not 0 <= size <= _MAX_SIZE:
        raise FormatError("expected an integer between 0 and 2**64-1", field=field)


def tile_ref_at(level: int, n: int, size: int, *, is_entries: bool = False) -> TileRef:
    """The tile at ``(level, n)`` as it exists in a tree of ``size`` (full or partial width)."""
    _check_size(size)
    shift = TILE_HEIGHT * level
    count = size >> shift  # hashes at this tile level
    if n < count >> TILE_HEIGHT:
        return TileRef(level, n, TILE_WIDTH, is_entries)
    width = count & (TILE_WIDTH - 1)
    if n == count >> TILE_HEIGHT and width:
        return TileRef(level, n, width, is_entries)
    raise FormatError(f"tile {level}/{n} does not exist at tree size {size}")


def tile_for_node(level: int, index: int, size: int) -> tuple[TileRef, int]:
    """Where the complete subtree ``(level, index)`` lives in a tree of ``size``.

    Returns the tile and the offset of the first of its ``2 ** (level % 8)`` consecutive entries
    whose MTH is the node's hash (a single entry when ``level`` is a multiple of 8).
    """
    _check_size(size)
    if not _is_int(level) or not 0 <= level < 64 or not _is_int(index) or index < 0:
        raise FormatError(f"invalid node ({level}, {index})")
    if (index + 1) << level > size:
        raise FormatError(f"node ({level}, {index}) is not complete at tree size {size}")
    tile_level, height = divmod(level, TILE_HEIGHT)
    first = index << height  # position of the node's first entry within its tile level
    ref = tile_ref_at(tile_level, first >> TILE_HEIGHT, size)
    return ref, first & (TILE_WIDTH - 1)


def tiles_for_size(size: int) -> list[TileRef]:
    """Every hash tile, full and partial, that a tree of ``size`` has, by level then index."""
    _check_size(size)
    refs: list[TileRef] = []
    level = 0
    while size >> (TILE_HEIGHT * level):
        count = size >> (TILE_HEIGHT * level)
        refs.extend(TileRef(level, n, TILE_WIDTH) for n in range(count >> TILE_HEIGHT))
        if count & (TILE_WIDTH - 1):
            refs.append(TileRef(level, count >> TILE_HEIGHT, count & (TILE_WIDTH - 1)))
        level += 1
    return refs


def right_edge_tiles(size: int) -> list[TileRef]:
    """The partial tiles of a tree of ``size``, lowest level first (at most one per level)."""
    _check_size(size)
    refs: list[TileRef] = []
    level = 0
    while size >> (TILE_HEIGHT * level):
        count = size >> (TILE_HEIGHT * level)
        if count & (TILE_WIDTH - 1):
            refs.append(TileRef(level, count >> TILE_HEIGHT, count & (TILE_WIDTH - 1)))
        level += 1
    return refs


def _get_tile(tiles: Mapping[TileRef, bytes], ref: TileRef) -> bytes:
    data = tiles.get(ref)
    used = ref
    if data is None:
        # Any wider tile at the same position starts with the same hashes: prefer the full tile.
        for width in range(TILE_WIDTH, ref.width, -1):
            used = TileRef(ref.level, ref.n, width, ref.is_entries)
            data = tiles.get(used)
            if data is not None:
                break
    if data is None:
        raise FormatError(f"tile {ref.path()} is needed but was not supplied", field=ref.path())
    if not isinstance(data, bytes | bytearray) or len(data) != used.byte_length:
        raise FormatError(
            f"tile {used.path()} must be {used.byte_length} bytes", field=used.path()
        )
    return bytes(data)


def tile_hashes(ref: TileRef, data: bytes) -> list[bytes]:
    """Split a hash tile's bytes into its hashes; the length must match ``ref.width`` exactly."""
    if ref.is_entries:
        raise FormatError("an entry bundle is not a hash tile", field=ref.path())
    if not isinstance(data, bytes | bytearray) or len(data) != ref.byte_length:
        raise FormatError(f"tile {ref.path()} must be {ref.byte_length} bytes", field=ref.path())
    return [bytes(data[i : i + _HASH]) for i in range(0, len(data), _HASH)]


def _nodes_for_ranges(ranges: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    return [merkle.range_nodes(a, b) for a, b in ranges]


def _tiles_for_nodes(groups: Sequence[Sequence[tuple[int, int]]], size: int) -> set[TileRef]:
    return {tile_for_node(level, index, size)[0] for nodes in groups for level, index in nodes}


def _node_hash(level: int, index: int, size: int, tiles: Mapping[TileRef, bytes]) -> bytes:
    ref, offset = tile_for_node(level, index, size)
    data = _get_tile(tiles, ref)
    count = 1 << (level % TILE_HEIGHT)
    return merkle.root_from_concatenated_hashes(data[offset * _HASH : (offset + count) * _HASH])


def _hashes_for_ranges(
    groups: Sequence[Sequence[tuple[int, int]]], size: int, tiles: Mapping[TileRef, bytes]
) -> list[bytes]:
    return [
        merkle.fold_right_edge([_node_hash(level, index, size, tiles) for level, index in nodes])
        for nodes in groups
    ]


def root_tiles(size: int) -> set[TileRef]:
    """The tiles :func:`root_from_tiles` needs for ``size`` (empty for the empty tree)."""
    return _tiles_for_nodes([merkle.CompactRange.node_ids(size)], size)


def root_from_tiles(size: int, tiles: Mapping[TileRef, bytes]) -> bytes:
    """MTH of the first ``size`` leaves, from the tiles named by :func:`root_tiles`."""
    return _hashes_for_ranges([merkle.CompactRange.node_ids(size)], size, tiles)[0]


def inclusion_proof_tiles(index: int, size: int) -> set[TileRef]:
    """The tiles :func:`inclusion_proof` needs for ``index`` in a tree of ``size``."""
    return _tiles_for_nodes(_nodes_for_ranges(merkle.inclusion_ranges(index, size)), size)


def inclusion_proof(index: int, size: int, tiles: Mapping[TileRef, bytes]) -> list[bytes]:
    """RFC 9162 inclusion proof for leaf ``index`` in a tree of ``size``, computed from tiles."""
    groups = _nodes_for_ranges(merkle.inclusion_ranges(index, size))
    return _hashes_for_ranges(groups, size, tiles)


def consistency_proof_tiles(old_size: int, new_size: int) -> set[TileRef]:
    """The tiles :func:`consistency_proof` needs (all read at ``new_size``)."""
    groups = _nodes_for_ranges(merkle.consistency_ranges(old_size, new_size))
    return _tiles_for_nodes(groups, new_size)


def consistency_proof(
    old_size: int, new_size: int, tiles: Mapping[TileRef, bytes]
) -> list[bytes]:
    """RFC 9162 consistency proof between two tree sizes, computed from tiles at ``new_size``."""
    groups = _nodes_for_ranges(merkle.consistency_ranges(old_size, new_size))
    return _hashes_for_ranges(groups, new_size, tiles)


def update_tiles(
    old_size: int,
    edge: Mapping[TileRef, bytes],
    new_leaf_hashes: Sequence[bytes],
    *,
    known_roots: Mapping[int, bytes] | None = None,
) -> dict[TileRef, bytes]:
    """Every tile that appending ``new_leaf_hashes`` to a tree of ``old_size`` creates or changes.

    ``edge`` holds the contents of :func:`right_edge_tiles` ``(old_size)`` (only those at levels
    the append reaches are read).  The result is keyed by each tile's ref at the new size: newly
    full tiles with width 256, the new right edge with its partial width.  Tiles are processed a
    level at a time on concatenated bytes, so the cost is one SHA-256 per new tree node.

    ``known_roots`` maps level-0 tile indices to the MTH of that full tile's 256 leaf hashes,
    for a caller that has already computed and verified them (a mirror's sync checks every
    block's hash against the partner's signed tree); those are used instead of hashing the tile
    again, which is most of this function's work. The caller vouches for them: a wrong one goes
    into the level-1 tile as it is.
    """
    merkle.check_hashes(new_leaf_hashes, "new_leaf_hashes")
    return update_tiles_concatenated(
        old_size, edge, b"".join(new_leaf_hashes), known_roots=known_roots
    )


def update_tiles_concatenated(
    old_size: int,
    edge: Mapping[TileRef, bytes],
    new_leaf_hashes: bytes,
    *,
    known_roots: Mapping[int, bytes] | None = None,
) -> dict[TileRef, bytes]:
    """:func:`update_tiles` for the new leaf hashes given as one buffer of concatenated 32-byte
    hashes (a tile's own format), as a bulk append holds them."""
    _check_size(old_size, "old_size")
    if type(new_leaf_hashes) is not bytes or len(new_leaf_hashes) % merkle.HASH_SIZE:
        raise FormatError("new_leaf_hashes must be concatenated 32-byte hashes")
    if not new_leaf_hashes:
        return {}
    new_count = len(new_leaf_hashes) // merkle.HASH_SIZE
    if old_size + new_count > _MAX_SIZE:
        raise FormatError("the tree would exceed 2**64-1 leaves")

    out: dict[TileRef, bytes] = {}
    new_entries = new_leaf_hashes  # the hashes appended at the current tile level
    level = 0
    while new_count:
        old_count = old_size >> (TILE_HEIGHT * level)  # hashes this tile level already had
        first_tile = old_count >> TILE_HEIGHT
        kept = old_count & (TILE_WIDTH - 1)
        if kept:
            stream = _get_tile(edge, TileRef(level, first_tile, kept)) + new_entries
        else:
            stream = new_entries
        total = kept + new_count
        full_tiles = total >> TILE_HEIGHT
        parents: list[bytes] = []
        known = known_roots if level == 0 and known_roots else {}
        for t in range(full_tiles):
            chunk = stream[t * _FULL_TILE_BYTES : (t + 1) * _FULL_TILE_BYTES]
            out[TileRef(level, first_tile + t, TILE_WIDTH)] = chunk
            # A full tile's MTH is the next tile level's next entry.
            root = known.get(first_tile + t)
            if root is None:
                root = merkle.root_from_concatenated_hashes(chunk)
            elif type(root) is not bytes or len(root) != merkle.HASH_SIZE:
                raise FormatError(f"known root of tile {first_tile + t} is not a 32-byte hash")
            parents.append(root)
        rest = total & (TILE_WIDTH - 1)
        if rest:
            out[TileRef(level, first_tile + full_tiles, rest)] = stream[
                full_tiles * _FULL_TILE_BYTES :
            ]
        new_entries = b"".join(parents)
        new_count = full_tiles
        level += 1
    return out


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """An entry bundle: each of 1..256 entries as ``uint16 big-endian length || bytes``."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise FormatError("an entry bundle holds 1 to 256 entries", field="entries")
    if all(type(e) is bytes and len(e) <= _MAX_ENTRY_LEN for e in entries):
        # the common case, in one pass of C-level joins (a bulk append encodes every leaf here)
        return b"".join([len(e).to_bytes(2, "big") + e for e in entries])
    parts: list[bytes] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, bytes | bytearray):
            raise FormatError("entries must be bytes", field=f"entries[{i}]")
        if len(entry) > _MAX_ENTRY_LEN:
            raise FormatError(
                f"entry of {len(entry)} bytes exceeds the {_MAX_ENTRY_LEN}-byte bundle limit",
                field=f"entries[{i}]",
            )
        parts.append(struct.pack(">H", len(entry)))
        parts.append(bytes(entry))
    return b"".join(parts)


def _split_bundle(data: bytes, count: int) -> list[bytes] | None:
    """The ``count`` entries of a well-formed bundle, in about half the time of the checked walk;
    None for anything else (missing or trailing bytes)."""
    out: list[bytes] = []
    append = out.append
    pos = 0
    try:
        for _ in range(count):
            start = pos + 2
            pos = start + (data[pos] << 8 | data[pos + 1])
            # A length past the end makes a short slice here, but then pos stays past the end:
            # the next length read raises IndexError, or the final check below fails.
            append(data[start:pos])
    except IndexError:
        return None
    return out if pos == len(data) else None


def decode_entry_bundle(data: bytes, count: int) -> list[bytes]:
    """Split an entry bundle into exactly ``count`` entries; no missing or trailing bytes."""
    if not _is_int(count) or not 1 <= count <= TILE_WIDTH:
        raise FormatError("an entry bundle holds 1 to 256 entries", field="count")
    if not isinstance(data, bytes | bytearray):
        raise FormatError("entry bundle must be bytes", field="data")
    if type(data) is bytes:
        split = _split_bundle(data, count)
        if split is not None:
            return split
    # Anything irregular: the same walk again, checking each step, for the exact error.
    return _walk_bundle(data, count)


def _walk_bundle(data: bytes | bytearray, count: int) -> list[bytes]:
    """decode_entry_bundle's checked walk: every step tested, each error named."""
    entries: list[bytes] = []
    pos = 0
    for i in range(count):
        if pos + 2 > len(data):
            raise FormatError(f"entry bundle ends before entry {i} of {count}", field="data")
        length = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if pos + length > len(data):
            raise FormatError(f"entry {i} of the bundle is truncated", field="data")
        entries.append(bytes(data[pos : pos + length]))
        pos += length
    if pos != len(data):
        raise FormatError(
            f"{len(data) - pos} trailing bytes after {count} bundle entries", field="data"
        )
    return entries

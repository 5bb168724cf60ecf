"""Verifying a partner's log tile by tile before it is mirrored (design.md "Sync", steps 2 and 3).

A mirror must never store a leaf it has not tied to the partner's signed root. Fetching every leaf
first and hashing the whole tree would need the whole log in memory; instead:

1. :func:`verify_tree_tiles` takes the tiles a tree of ``size`` has at level 1 and above, plus the
   partial level-0 tile, and checks that they hash to the checkpoint's root. Level-1 entry ``n`` is
   the Merkle tree hash (MTH) of the full 256-leaf block ``n``, so this yields a verified hash for
   every full block, and the leaf hashes of the final partial block, in ``size / 256`` hashes of
   memory (a :class:`VerifiedTree`).
2. :func:`verify_bundle` then checks each entry bundle, as it arrives, against its block's verified
   hash (or the verified partial tile) before any of it is stored.

The root is recomputed with RFC 9162 structure: the tree over ``size`` leaves splits at powers of
two, so for ``size = 256 * B + t`` its compact range is the compact range of the ``B`` block hashes
(perfect subtrees of whole blocks) followed by the MTH of the ``t`` tail leaves; folding those from
the right (:func:`protocol.merkle.fold_right_edge`) gives the root. Every tile at level 2 and above
is checked against the level below it: entry ``i`` of level ``L + 1`` must be the MTH of full tile
``i`` of level ``L``, so a mirror can re-serve all of them.

Errors: a tile that is missing or has the wrong length is a :class:`~protocol.errors.FormatError`
naming its path; tiles or bundles that do not hash to what they must are a
:class:`~protocol.errors.ProofError` naming the tile or block.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protocol import merkle
from protocol.errors import FormatError, ProofError
from protocol.tiles import TILE_HEIGHT, TILE_WIDTH, TileRef

__all__ = [
    "VerifiedTree",
    "mirror_tiles_needed",
    "verify_bundle",
    "verify_bundle_hashes",
    "verify_tree_tiles",
]

_HASH = merkle.HASH_SIZE
_FULL_TILE_BYTES = TILE_WIDTH * _HASH
_MAX_SIZE = (1 << 64) - 1
_HASH_TYPES = frozenset({bytes, bytearray})
_LEAF_PREFIX = b"\x00"


def _check_size(size: object) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= _MAX_SIZE:
        raise FormatError("tree size must be an integer between 0 and 2**64-1", field="size")
    return size


def _split(buf: bytes) -> tuple[bytes, ...]:
    return tuple([buf[i : i + _HASH] for i in range(0, len(buf), _HASH)])


def _root_of(blocks: bytes, tail: bytes) -> bytes:
    """The RFC 9162 root of a tree whose full blocks have the MTHs ``blocks`` (concatenated) and
    whose final partial block has the leaf hashes ``tail`` (concatenated)."""
    count = len(blocks) // _HASH
    nodes: list[bytes] = []
    pos = 0
    for level in range(count.bit_length() - 1, -1, -1):
        if count >> level & 1:
            width = 1 << level
            nodes.append(
                merkle.root_from_concatenated_hashes(blocks[pos * _HASH : (pos + width) * _HASH])
            )
            pos += width
    if tail:
        # The tail starts at a multiple of 256 and holds fewer than 256 leaves, so it is one
        # (right-edge) subtree of the RFC tree, the last in the compact range.
        nodes.append(merkle.root_from_concatenated_hashes(tail))
    return merkle.fold_right_edge(nodes)


@dataclass(frozen=True)
class VerifiedTree:
    """A partner's tree of ``size`` leaves reduced to what checking its entry bundles needs.

    Built by :func:`verify_tree_tiles`; the constructor itself recomputes the root from
    ``block_hashes`` and ``tail`` (ProofError if they disagree), so a VerifiedTree whose hashes do
    not lead to its root cannot exist.
    """

    size: int
    root: bytes
    #: MTH of each full 256-leaf block; index = block number (= entry bundle number)
    block_hashes: tuple[bytes, ...]
    #: leaf hashes of the final partial block (``size % 256`` of them)
    tail: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_size(self.size)
        if not isinstance(self.root, bytes) or len(self.root) != _HASH:
            raise FormatError(f"root must be {_HASH} bytes", field="root")
        for name, value, count in (
            ("block_hashes", self.block_hashes, self.size >> TILE_HEIGHT),
            ("tail", self.tail, self.size & (TILE_WIDTH - 1)),
        ):
            if not isinstance(value, tuple) or len(value) != count:
                raise FormatError(
                    f"a tree of size {self.size} has {count} {name}, not "
                    f"{len(value) if isinstance(value, tuple) else 'a non-tuple'}",
                    field=name,
                )
            merkle.check_hashes(value, name)
        if _root_of(b"".join(self.block_hashes), b"".join(self.tail)) != self.root:
            raise ProofError(
                f"block hashes and tail of a tree of size {self.size} do not hash to its root"
            )

    @property
    def bundle_count(self) -> int:
        """How many entry bundles (full and the final partial one) the tree has."""
        return len(self.block_hashes) + (1 if self.tail else 0)

    def bundle_ref(self, n: int) -> TileRef:
        """The entry bundle ``n`` as it exists at this size (its width says how many leaves)."""
        self._check_bundle(n)
        width = TILE_WIDTH if n < len(self.block_hashes) else len(self.tail)
        return TileRef(0, n, width, is_entries=True)

    def _check_bundle(self, n: object) -> int:
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < self.bundle_count:
            raise FormatError(
                f"entry bundle {n!r} does not exist in a tree of size {self.size}", field="n"
            )
        return n


def _tile_bytes(tiles: Mapping[TileRef, bytes], ref: TileRef) -> bytes:
    """The bytes of ``ref``; a wider tile at the same position serves too (it starts the same)."""
    data = tiles.get(ref)
    used = ref
    if data is None:
        for width in range(TILE_WIDTH, ref.width, -1):
            used = TileRef(ref.level, ref.n, width)
            data = tiles.get(used)
            if data is not None:
                break
    if data is None:
        raise FormatError(f"tile {ref.path()} is needed but was not supplied", field=ref.path())
    if not isinstance(data, bytes | bytearray) or len(data) != used.byte_length:
        raise FormatError(f"tile {used.path()} must be {used.byte_length} bytes", field=used.path())
    return bytes(data[: ref.byte_length])


def _level_refs(level: int, size: int) -> list[TileRef]:
    count = size >> (TILE_HEIGHT * level)
    refs = [TileRef(level, n, TILE_WIDTH) for n in range(count >> TILE_HEIGHT)]
    if count & (TILE_WIDTH - 1):
        refs.append(TileRef(level, count >> TILE_HEIGHT, count & (TILE_WIDTH - 1)))
    return refs


def mirror_tiles_needed(size: int) -> list[TileRef]:
    """The tiles :func:`verify_tree_tiles` needs for ``size``: the partial level-0 tile (if
    ``size % 256``), then every tile at level 1 and above, by level then index."""
    _check_size(size)
    refs: list[TileRef] = []
    if size & (TILE_WIDTH - 1):
        refs.append(TileRef(0, size >> TILE_HEIGHT, size & (TILE_WIDTH - 1)))
    level = 1
    while size >> (TILE_HEIGHT * level):
        refs.extend(_level_refs(level, size))
        level += 1
    return refs


def verify_tree_tiles(size: int, root: bytes, tiles: Mapping[TileRef, bytes]) -> VerifiedTree:
    """Check that the tiles of a tree of ``size`` hash to ``root``; return the verified blocks.

    ``tiles`` must hold every tile of :func:`mirror_tiles_needed` ``(size)`` (other tiles are
    ignored; a wider tile at the same position may stand in for a partial one). FormatError for a
    missing or wrongly sized tile, ProofError naming the tile when a level-2+ tile disagrees with
    the level below, or when the level-1 tiles and the partial level-0 tile do not lead to ``root``.
    """
    _check_size(size)
    if not isinstance(root, bytes | bytearray) or len(root) != _HASH:
        raise FormatError(f"root must be {_HASH} bytes", field="root")

    # levels[i] = the concatenated entries of tile level i + 1 (levels[0] = the block hashes)
    levels: list[bytes] = []
    level = 1
    while size >> (TILE_HEIGHT * level):
        levels.append(b"".join([_tile_bytes(tiles, ref) for ref in _level_refs(level, size)]))
        level += 1

    for i in range(len(levels) - 1):
        lower, upper = levels[i], levels[i + 1]
        full = len(lower) // _FULL_TILE_BYTES  # == the number of entries at the level above
        mths = b"".join(
            [
                merkle.root_from_concatenated_hashes(
                    lower[t * _FULL_TILE_BYTES : (t + 1) * _FULL_TILE_BYTES]
                )
                for t in range(full)
            ]
        )
        if mths != upper:
            bad = next(
                t
                for t in range(full)
                if mths[t * _HASH : (t + 1) * _HASH] != upper[t * _HASH : (t + 1) * _HASH]
            )
            child = TileRef(i + 1, bad, TILE_WIDTH)
            count = size >> (TILE_HEIGHT * (i + 2))
            parent_n = bad >> TILE_HEIGHT
            parent_width = min(TILE_WIDTH, count - (parent_n << TILE_HEIGHT))
            parent = TileRef(i + 2, parent_n, parent_width)
            raise ProofError(
                f"tile {child.path()} does not hash to entry {bad & (TILE_WIDTH - 1)} of tile "
                f"{parent.path()}",
                field=child.path(),
            )

    tail = b""
    tail_ref: TileRef | None = None
    if size & (TILE_WIDTH - 1):
        tail_ref = TileRef(0, size >> TILE_HEIGHT, size & (TILE_WIDTH - 1))
        tail = _tile_bytes(tiles, tail_ref)

    blocks = levels[0] if levels else b""
    try:
        return VerifiedTree(size, bytes(root), _split(blocks), _split(tail))
    except ProofError as e:
        edge = [r.path() for r in mirror_tiles_needed(size) if not r.is_full]
        if levels:
            edge.append("the level-1 tiles")
        raise ProofError(
            f"the tiles of a tree of size {size} ({', '.join(edge)}) do not hash to its root",
            field=tail_ref.path() if tail_ref is not None and not levels else None,
        ) from e


def verify_bundle(
    tree: VerifiedTree, n: int, leaves: Sequence[bytes], *, prefix: Sequence[bytes] = ()
) -> list[bytes]:
    """Check the leaves of entry bundle ``n`` against ``tree``; return their leaf hashes.

    ``prefix`` holds the leaf hashes of the same block already stored (resuming mid-block: only
    the new ``leaves`` are given). A full block's ``prefix + hashes`` must be exactly 256 leaves
    whose MTH is ``tree.block_hashes[n]``; the final partial block's must equal ``tree.tail``.
    FormatError for malformed arguments, ProofError naming the block on any mismatch (a changed,
    reordered, missing or extra leaf).
    """
    if not isinstance(tree, VerifiedTree):
        raise FormatError("tree must be a VerifiedTree", field="tree")
    n = tree._check_bundle(n)
    if not set(map(type, leaves)) <= _HASH_TYPES:
        bad = next(i for i, leaf in enumerate(leaves) if not isinstance(leaf, bytes | bytearray))
        raise FormatError("leaves must be bytes", field=f"leaves[{bad}]")
    merkle.check_hashes(prefix, "prefix")
    sha = hashlib.sha256
    hashes = [sha(_LEAF_PREFIX + leaf).digest() for leaf in leaves]
    _check_block(tree, n, prefix, b"".join(hashes))
    return hashes


def verify_bundle_hashes(
    tree: VerifiedTree, n: int, hashes: bytes, *, prefix: Sequence[bytes] = ()
) -> None:
    """:func:`verify_bundle` for leaf hashes computed elsewhere (``hashes``: the new leaves'
    32-byte hashes, concatenated), e.g. by a worker process that also checked the records.

    The caller must have hashed exactly the leaves it then stores, as ``sha256(0x00 ‖ leaf)``.
    """
    if not isinstance(tree, VerifiedTree):
        raise FormatError("tree must be a VerifiedTree", field="tree")
    n = tree._check_bundle(n)
    if not isinstance(hashes, bytes) or len(hashes) % _HASH:
        raise FormatError("hashes must be concatenated 32-byte hashes", field="hashes")
    merkle.check_hashes(prefix, "prefix")
    _check_block(tree, n, prefix, hashes)


def _check_block(tree: VerifiedTree, n: int, prefix: Sequence[bytes], hashes: bytes) -> None:
    """ProofError unless ``prefix + hashes`` are exactly the leaf hashes of verified block n."""
    buf = b"".join(prefix) + hashes
    ref = tree.bundle_ref(n)
    got = len(buf) // _HASH
    where = f"entry bundle {n} ({ref.path()}) of a tree of size {tree.size}"
    if got != ref.width:
        new = len(hashes) // _HASH
        raise ProofError(
            f"{where} has {ref.width} leaves, got {got} ({len(prefix)} held + {new} new)",
            field=ref.path(),
        )
    if n < len(tree.block_hashes):
        ok = merkle.root_from_concatenated_hashes(buf) == tree.block_hashes[n]
    else:
        ok = buf == b"".join(tree.tail)
    if not ok:
        raise ProofError(f"{where}: the leaves do not hash to the verified block", field=ref.path())

"""RFC 9162 §2.1 Merkle trees: hashing, inclusion and consistency proofs, and compact ranges.

Everything here follows RFC 9162 (the same tree as RFC 6962) with SHA-256:

* a leaf hash is ``SHA-256(0x00 || data)`` and an interior node ``SHA-256(0x01 || left || right)``;
* the tree over ``n`` leaves splits at ``k``, the largest power of two smaller than ``n``;
* the root of the empty tree is ``SHA-256("")``.

Vocabulary used throughout ``protocol``: a *node* ``(level, index)`` is the root of a complete
(perfect) subtree of ``2**level`` leaves covering ``[index << level, (index + 1) << level)``;
level 0 is a leaf.  A *range* ``(start, end)`` is a subtree of the RFC tree that may be incomplete
on its right edge (``MTH(D[start:end])``); :func:`range_nodes` splits it into nodes.  Proofs are
described as ranges first (:func:`inclusion_ranges`, :func:`consistency_ranges`) so that the
list-based functions here and the tile-based ones in :mod:`protocol.tiles` compute exactly the
same hashes.

Verification functions return ``None`` or raise: :class:`~protocol.errors.FormatError` for inputs
that are malformed (wrong hash length, negative sizes, an index outside the tree) and
:class:`~protocol.errors.ProofError` for a well-formed proof that does not verify.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from protocol.errors import FormatError, ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "check_hashes",
    "consistency_proof",
    "consistency_ranges",
    "fold_right_edge",
    "inclusion_proof",
    "inclusion_ranges",
    "leaf_hash",
    "node_hash",
    "range_nodes",
    "root_from_concatenated_hashes",
    "root_from_inclusion",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32

# Sizes and indices are uint64 on the wire (RFC 9162, tlog-checkpoint); larger ones are malformed.
_MAX_SIZE = (1 << 64) - 1
# A valid proof for a uint64-sized tree has at most 64 (inclusion) or 2*64 (consistency) hashes;
# bounding the loop keeps a hostile proof from costing more than a valid one.
_MAX_PROOF_LEN = 2 * 64 + 1

_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT: bytes = _sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one log entry (RFC 9162 §2.1.1)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node (RFC 9162 §2.1.1)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _check_hash(value: bytes, field: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise FormatError(f"expected a {HASH_SIZE}-byte hash", field=field)


_HASH_TYPES = frozenset({bytes, bytearray})


def check_hashes(values: Sequence[bytes], field: str) -> None:
    """Raise FormatError unless every value is a 32-byte ``bytes``/``bytearray`` hash."""
    # Fast path in C (map/set) for the million-leaf case; the loop below only runs to name the
    # offending element.
    if set(map(type, values)) <= _HASH_TYPES and set(map(len, values)) <= {HASH_SIZE}:
        return
    for i, value in enumerate(values):
        if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
            raise FormatError(f"expected {HASH_SIZE}-byte hashes", field=f"{field}[{i}]")


def _check_size(value: int, field: str) -> None:
    # bool is an int subclass; a True tree size is a caller bug, not a size of one.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_SIZE:
        raise FormatError("expected an integer between 0 and 2**64-1", field=field)


def _concatenated_root(buf: bytes, count: int) -> bytes:
    """MTH of ``count`` concatenated hashes, level by level.

    Pairing neighbours and carrying an odd last hash up unchanged yields exactly RFC 9162's MTH: the
    left-heavy split at the largest power of two puts every unpaired node at the right edge.
    """
    sha = _sha256
    prefix = _NODE_PREFIX
    while count > 1:
        pairs = count >> 1
        end = pairs * 64
        nxt = b"".join([sha(prefix + buf[i : i + 64]).digest() for i in range(0, end, 64)])
        if count & 1:
            nxt += buf[end : end + 32]
        buf, count = nxt, pairs + (count & 1)
    return buf


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes (RFC 9162 §2.1.1), computed iteratively."""
    if not hashes:
        return EMPTY_ROOT
    check_hashes(hashes, "leaf_hashes")
    return _concatenated_root(b"".join(hashes), len(hashes))


def root_from_concatenated_hashes(buf: bytes) -> bytes:
    """MTH over leaf hashes given as one concatenated buffer (a tile's format); fastest path."""
    if len(buf) % HASH_SIZE:
        raise FormatError(f"length {len(buf)} is not a multiple of {HASH_SIZE}")
    if not buf:
        return EMPTY_ROOT
    return _concatenated_root(bytes(buf), len(buf) // HASH_SIZE)


def fold_right_edge(hashes: Sequence[bytes]) -> bytes:
    """Combine the roots of consecutive, shrinking perfect subtrees into one subtree hash.

    ``hashes`` are given left to right (as :func:`range_nodes` or :class:`CompactRange` list them);
    the smaller right-hand subtrees are joined first, as the RFC tree does.
    """
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = _sha256(_NODE_PREFIX + h + acc).digest()
    return acc


def range_nodes(start: int, end: int) -> list[tuple[int, int]]:
    """The perfect subtrees ``(level, index)`` that make up ``MTH(D[start:end])``, left to right.

    ``[start, end)`` must be a subtree of the RFC tree: non-empty and with ``start`` a multiple of
    the smallest power of two that is at least ``end - start`` (every range used by proofs is).
    """
    width = end - start
    if width <= 0 or start % (1 << (width - 1).bit_length()):
        raise FormatError(f"[{start}, {end}) is not a subtree of the RFC 9162 tree")
    nodes: list[tuple[int, int]] = []
    pos = start
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            nodes.append((level, pos >> level))
            pos += 1 << level
    return nodes


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose hashes form PATH(index, D[0:size]) (RFC 9162 §2.1.3.1), leaf end first.

    Below ``inner`` (one past the highest bit where ``index`` and ``size - 1`` differ) every level
    has a sibling, the one at ``inner - 1`` possibly cut short by the tree's right edge; from
    ``inner`` up only left siblings exist, and those are complete.
    """
    _check_size(size, "size")
    _check_size(index, "index")
    if index >= size:
        raise FormatError(f"leaf index {index} is outside a tree of size {size}", field="index")
    ranges: list[tuple[int, int]] = []
    for level in range(size.bit_length()):
        sibling = (index >> level) ^ 1
        start = sibling << level
        if start >= size:
            # Only possible at or above ``inner``: the node has no right sibling and is carried up.
            continue
        ranges.append((start, min(start + (1 << level), size)))
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The ranges whose hashes form PROOF(old_size, D[0:new_size]) (RFC 9162 §2.1.4.1), in order.

    This is SUBPROOF unrolled: each step either descends left (the right part becomes a proof
    element) or descends right (the complete left part becomes one); the recursion's output order
    is the reverse of the descent.
    """
    _check_size(old_size, "old_size")
    _check_size(new_size, "new_size")
    if old_size > new_size:
        raise FormatError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    start, end, m, whole = 0, new_size, old_size, True
    tail: list[tuple[int, int]] = []
    while m != end - start:
        k = 1 << ((end - start - 1).bit_length() - 1)
        if m <= k:
            tail.append((start + k, end))
            end = start + k
        else:
            tail.append((start, start + k))
            m -= k
            start += k
            whole = False
    head = [] if whole else [(start, end)]
    return head + tail[::-1]


def _range_hash(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    return _concatenated_root(b"".join(leaf_hashes[start:end]), end - start)


def _check_tree(leaf_hashes: Sequence[bytes], size: int | None) -> int:
    if size is None:
        size = len(leaf_hashes)
    _check_size(size, "size")
    if size > len(leaf_hashes):
        raise FormatError(f"size {size} exceeds the {len(leaf_hashes)} leaf hashes given")
    check_hashes(leaf_hashes[:size], "leaf_hashes")
    return size


def inclusion_proof(
    leaf_hashes: Sequence[bytes], index: int, size: int | None = None
) -> list[bytes]:
    """PATH(index, D[0:size]) over the given leaf hashes; ``size`` defaults to all of them."""
    size = _check_tree(leaf_hashes, size)
    return [_range_hash(leaf_hashes, a, b) for a, b in inclusion_ranges(index, size)]


def consistency_proof(
    leaf_hashes: Sequence[bytes], old_size: int, new_size: int | None = None
) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) over the given leaf hashes; empty for sizes 0 and equal."""
    new_size = _check_tree(leaf_hashes, new_size)
    return [_range_hash(leaf_hashes, a, b) for a, b in consistency_ranges(old_size, new_size)]


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof for the LEAF HASH ``leaf`` (RFC 9162 §2.1.3.2).

    Raises FormatError for malformed input and ProofError if the proof has the wrong shape for
    ``index`` and ``size``; comparing the result with a trusted root is the caller's job (or use
    :func:`verify_inclusion`).
    """
    _check_size(size, "size")
    _check_size(index, "index")
    if index >= size:
        raise FormatError(f"leaf index {index} is outside a tree of size {size}", field="index")
    _check_hash(leaf, "leaf")
    if len(proof) > _MAX_PROOF_LEN:
        raise ProofError("inclusion proof is too long")
    check_hashes(proof, "proof")
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            r = _sha256(_NODE_PREFIX + p + r).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(_NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short for the tree size")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that LEAF HASH ``leaf`` sits at ``index`` in the tree of ``size`` with ``root``."""
    _check_hash(root, "root")
    if root_from_inclusion(leaf, index, size, proof) != root:
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the tree root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (old_size, old_root) is a prefix of (new_size, new_root).

    RFC 9162 §2.1.4.2.  Edge cases are strict: equal sizes need equal roots and an empty proof; an
    old size of 0 needs an empty proof and the empty-tree root (a size-0 tree has no other root).
    """
    _check_size(old_size, "old_size")
    _check_size(new_size, "new_size")
    _check_hash(old_root, "old_root")
    _check_hash(new_root, "new_root")
    if len(proof) > _MAX_PROOF_LEN:
        raise ProofError("consistency proof is too long")
    check_hashes(proof, "proof")
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("different roots for the same tree size")
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise ProofError("a tree of size 0 must have the empty-tree root")
        return
    if not proof:
        raise ProofError("consistency proof is empty")

    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a complete subtree of the new one: its root is the first node.
        path.insert(0, old_root)
    fr, sr = consistency_roots(old_size, new_size, path)
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("consistency proof does not lead to the new root")


def consistency_roots(old_size: int, new_size: int, path: Sequence[bytes]) -> tuple[bytes, bytes]:
    """The (old root, new root) that a consistency path implies (RFC 9162 §2.1.4.2).

    ``path`` starts with the seed: for a power-of-two ``old_size`` the caller prepends the old
    root itself (:func:`verify_consistency` does; an equivocation check must not, since the old
    root is what is in question). Requires ``0 < old_size < new_size`` and a non-empty path;
    ProofError when the path's length does not fit the sizes.
    """
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE_PREFIX + c + fr).digest()
            sr = _sha256(_NODE_PREFIX + c + sr).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(_NODE_PREFIX + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short for the tree sizes")
    return fr, sr


class CompactRange:
    """The right edge of a tree of ``size`` leaves: its perfect subtrees' roots, left to right.

    One hash per set bit of ``size`` (largest subtree first), so O(log n) memory: the sequencer and
    auditors fold millions of leaves through this without holding them.  The root is the fold of the
    hashes from the right (:func:`fold_right_edge`).
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        _check_size(size, "size")
        if len(hashes) != size.bit_count():
            raise FormatError(
                f"a compact range of size {size} has {size.bit_count()} hashes, not {len(hashes)}",
                field="hashes",
            )
        check_hashes(hashes, "hashes")
        self._size = size
        self._hashes = [bytes(h) for h in hashes]

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, hashes=<{len(self._hashes)}>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable

    @staticmethod
    def node_ids(size: int) -> list[tuple[int, int]]:
        """``(level, index)`` of the subtree roots in a compact range of ``size``, left to right."""
        _check_size(size, "size")
        return [
            (level, (size >> level) - 1)
            for level in range(size.bit_length() - 1, -1, -1)
            if size >> level & 1
        ]

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return every node it completes as ``(level, index, hash)``.

        The first element is the leaf itself (level 0); each following one is the parent formed by
        merging with the left neighbour, as many times as ``size`` had trailing one bits.
        """
        _check_hash(leaf_hash, "leaf_hash")
        if self._size == _MAX_SIZE:
            raise FormatError("compact range is full (2**64-1 leaves)")
        hashes = self._hashes
        index = self._size
        h = bytes(leaf_hash)
        created = [(0, index, h)]
        level = 0
        while index & 1:
            h = _sha256(_NODE_PREFIX + hashes.pop() + h).digest()
            index >>= 1
            level += 1
            created.append((level, index, h))
        hashes.append(h)
        self._size += 1
        return created

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes (the fast path: no per-node records are kept)."""
        hashes = self._hashes
        size = self._size
        sha = _sha256
        prefix = _NODE_PREFIX
        try:
            for i, leaf in enumerate(leaf_hashes):
                if not isinstance(leaf, bytes | bytearray) or len(leaf) != HASH_SIZE:
                    raise FormatError(
                        f"expected {HASH_SIZE}-byte hashes", field=f"leaf_hashes[{i}]"
                    )
                if size == _MAX_SIZE:
                    raise FormatError("compact range is full (2**64-1 leaves)")
                h = bytes(leaf)
                n = size
                while n & 1:
                    h = sha(prefix + hashes.pop() + h).digest()
                    n >>= 1
                hashes.append(h)
                size += 1
        finally:
            # Leaves consumed before an error stay appended, so the range is always self-consistent.
            self._size = size

    def append_subtree(self, level: int, subtree_hash: bytes) -> None:
        """Append ``2**level`` leaves at once, given as the hash of their perfect subtree.

        The range's size must be a multiple of ``2**level`` (the subtree is then a node of the
        tree, aligned on its own width), so the result is exactly that of :meth:`extend` with the
        subtree's leaves: an auditor that already hashed a full tile's leaves elsewhere folds one
        hash instead of 256.
        """
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level < 64:
            raise FormatError("expected a subtree level between 0 and 63", field="level")
        _check_hash(subtree_hash, "subtree_hash")
        size = self._size
        if size & ((1 << level) - 1):
            raise FormatError(
                f"a subtree of 2**{level} leaves cannot follow {size} leaves (not aligned)",
                field="level",
            )
        if size + (1 << level) > _MAX_SIZE:
            raise FormatError("compact range is full (2**64-1 leaves)")
        hashes = self._hashes
        h = bytes(subtree_hash)
        n = size >> level
        # The same carry as in extend, starting at the subtree's level: every stored hash is of a
        # subtree at least as high, since the size is aligned.
        while n & 1:
            h = _sha256(_NODE_PREFIX + hashes.pop() + h).digest()
            n >>= 1
        hashes.append(h)
        self._size = size + (1 << level)

    def root(self) -> bytes:
        """MTH of the ``size`` leaves appended so far."""
        return fold_right_edge(self._hashes)

"""The CPU-bound half of a sync, for worker processes: check a bundle's records, hash its leaves.

A bootstrap sync of a large set spends as long checking records (``scan_record``) and hashing
leaves as SQLite spends storing them, and both need the GIL. For a large sync,
:mod:`node.federation.sync` therefore sends each fetched bundle's bytes to a worker process
running :func:`check_bundle` while the node's own process stores the previous batch (a small
sync runs the same function in its own process, so both take one path).

Only bytes go to a worker, and the rows the store inserts come back (without leaf bytes). A
worker decides nothing: the sync still verifies the returned hashes against the signed tree
before it stores anything, and any record a worker flags is checked again in the node's
process, which raises the exact error.
This module imports only ``protocol`` and the storage key function, so workers start quickly.
"""

from __future__ import annotations

import binascii
import hashlib

from node.storage import RecordRow, hash_key, hash_key_prefix
from protocol import merkle
from protocol import tiles as tlog
from protocol.errors import ProtocolError
from protocol.scan import EntryShapes, EntryView, RecordView, scan_record

#: the entry shapes this process has seen: a cache, it changes how fast a bundle is checked,
#: never the result
_SHAPES = EntryShapes()

#: what :func:`check_bundle` returns: (leaf hashes concatenated, rows, non-entry records, index
#: of the first invalid leaf or -1, the root of a whole 256-leaf bundle or None)
Checked = tuple[bytes, list[RecordRow], list[tuple[int, RecordView]], int, bytes | None]


def check_bundle(data: bytes, width: int, offset: int, base: int) -> Checked:
    """Check the leaves ``offset..`` of an entry bundle of ``width`` leaves, the first of which
    is leaf ``base`` of its log.

    Returns the leaf hashes (concatenated), the ``records`` rows of the valid leading leaves
    (:data:`node.storage.RecordRow`, with their index in the log), ``(index, view)`` of those
    that are not entries, the position of the first invalid leaf or -1, and the RFC 9162 root of
    a whole 256-leaf bundle or None. The rows carry no leaf bytes: for a whole bundle the store
    keeps the bundle itself (node.storage.MirrorLeaves), and for a partial one the caller adds
    the bytes from its own split of the same bundle, so that only bytes it holds are stored.

    Every leaf is hashed, valid or not, so the caller can first verify the bundle against the
    tree and only then report a bad record (a tampered bundle is a ProofError, not a bad record). A
    malformed bundle gives empty hashes and index 0: the caller's own decode raises its error.
    """
    try:
        leaves = tlog.decode_entry_bundle(data, width)[offset:]
    except ProtocolError:
        return b"", [], [], 0, None
    sha = hashlib.sha256
    hashes = b"".join([sha(b"\x00" + leaf).digest() for leaf in leaves])
    root = (
        merkle.root_from_concatenated_hashes(hashes) if len(leaves) == tlog.TILE_WIDTH else None
    )
    rows: list[RecordRow] = []
    records: list[tuple[int, RecordView]] = []
    # Most leaves are entries of one shape: checked together without decoding (EntryShapes),
    # their rows made here from the ids and values it returns. The others, and everything from
    # the first leaf that fails, go through scan_record in order below.
    shaped_rows: dict[int, RecordRow] = {}
    shaped = _SHAPES.match_many(leaves)
    if shaped is not None:
        ids = shaped.ids.hex()
        values = binascii.hexlify(shaped.values)
        size = shaped.value_size * 2  # hex digits per value
        prefix = hash_key_prefix(shaped.facts.hash_type)  # hash_key, from the bytes
        for k, i in enumerate(shaped.positions):
            key = sha(prefix + values[k * size : k * size + size]).digest()[:16]
            shaped_rows[i] = (base + i, ids[k * 32 : k * 32 + 32], "entry", key, None)
    for i, leaf in enumerate(leaves):
        row = shaped_rows.get(i)
        if row is not None:
            rows.append(row)
            continue
        try:
            view = scan_record(leaf)
        except ProtocolError:
            return hashes, rows, records, i, root
        index = base + i
        if type(view) is EntryView:
            _SHAPES.learn(leaf, view)
            key = hash_key(view.hash.type, view.hash.value)
            rows.append((index, view.id, "entry", key, None))
        else:
            rows.append((index, view.id, view.type, None, None))
            records.append((index, view))
    return hashes, rows, records, -1, root

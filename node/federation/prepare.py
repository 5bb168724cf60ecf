"""The CPU-bound half of a sync, for worker processes: check a bundle's records, hash its leaves.

A bootstrap sync of a large set spends as long checking records (``scan_record``) and hashing
leaves as SQLite spends storing them, and both need the GIL. For a large sync,
:mod:`node.federation.sync` therefore sends each fetched bundle's bytes to a worker process
running :func:`check_bundle` while the node's own process stores the previous batch (a small
sync runs the same function in its own process, so both take one path).

Only bytes go to a worker and only compact facts come back. A worker decides nothing: the sync
still verifies the returned hashes against the signed tree before it stores anything, and any
record a worker flags is checked again in the node's process, which raises the exact error.
This module imports only ``protocol`` and the storage key function, so workers start quickly.
"""

from __future__ import annotations

import hashlib

from node.storage import hash_key
from protocol import merkle
from protocol import tiles as tlog
from protocol.errors import ProtocolError
from protocol.scan import EntryView, RecordView, scan_record

#: an entry as (record id, hash key); any other record as its view
LeafFacts = tuple[str, bytes] | RecordView


#: what :func:`check_bundle` returns
Checked = tuple[bytes, list[LeafFacts], int, bytes | None]


def check_bundle(data: bytes, width: int, offset: int) -> Checked:
    """(leaf hashes concatenated, facts of the valid leading leaves, index of the first invalid
    leaf or -1, the RFC 9162 root of a whole 256-leaf bundle or None) for the leaves
    ``offset..`` of an entry bundle of ``width`` leaves.

    Every leaf is hashed, valid or not, so the caller can first verify the bundle against the
    tree and only then report a bad record (a tampered bundle is a ProofError, not a bad record). A
    malformed bundle gives empty hashes and index 0: the caller's own decode raises its error.
    """
    try:
        leaves = tlog.decode_entry_bundle(data, width)[offset:]
    except ProtocolError:
        return b"", [], 0, None
    sha = hashlib.sha256
    hashes = b"".join([sha(b"\x00" + leaf).digest() for leaf in leaves])
    root = (
        merkle.root_from_concatenated_hashes(hashes) if len(leaves) == tlog.TILE_WIDTH else None
    )
    facts: list[LeafFacts] = []
    for i, leaf in enumerate(leaves):
        try:
            view = scan_record(leaf)
        except ProtocolError:
            return hashes, facts, i, root
        if type(view) is EntryView:
            facts.append((view.id, hash_key(view.hash.type, view.hash.value)))
        else:
            facts.append(view)
    return hashes, facts, -1, root

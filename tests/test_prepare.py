"""node.federation.prepare.check_bundle: the worker half of a large sync."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_storage import make_entry, make_revocation
from test_verify import make_entry as verify_make_entry
from test_verify import make_revocation as verify_make_revocation

from node.federation.prepare import check_bundle
from node.storage import hash_key
from protocol import merkle
from protocol import tiles as tlog
from protocol.errors import ProtocolError
from protocol.records import encode_record
from protocol.scan import EntryView, RevocationView, scan_record


def _leaves() -> list[bytes]:
    entries = [make_entry() for _ in range(5)]
    return [encode_record(e) for e in entries] + [make_revocation(entries[1]).data]


def test_a_valid_bundle_gives_every_hash_and_the_rows_to_store() -> None:
    leaves = _leaves()
    bundle = tlog.encode_entry_bundle(leaves)
    hashes, rows, records, bad, root = check_bundle(bundle, len(leaves), 0, 1000)
    assert bad == -1 and root is None  # not a whole bundle
    assert hashes == b"".join(merkle.leaf_hash(x) for x in leaves)
    assert pickle.loads(pickle.dumps(rows)) == rows  # rows cross a process boundary
    assert [r[0] for r in rows] == list(range(1000, 1006))  # their index in the log
    assert [r[2] for r in rows] == ["entry"] * 5 + ["revocation"]
    assert all(r[4] is None for r in rows)  # the caller adds bytes from its own split
    for leaf, row in zip(leaves, rows, strict=True):
        assert f'"id":"{row[1]}"'.encode() in leaf
    assert rows[0][3] == hash_key("sha256", leaves[0].split(b'"value":"')[1][:64].decode())
    assert rows[5][3] is None
    ((index, view),) = records  # only the leaves that are not entries
    assert index == 1005 and isinstance(view, RevocationView) and view.id == rows[5][1]
    # resuming mid-bundle: only the leaves from the offset, numbered from base
    hashes, rows, records, bad, root = check_bundle(bundle, len(leaves), 4, 1004)
    assert (len(hashes), [r[0] for r in rows], bad, root) == (64, [1004, 1005], -1, None)
    assert [i for i, _ in records] == [1005]


def test_a_whole_bundle_comes_with_its_root() -> None:
    leaves = [encode_record(make_entry()) for _ in range(256)]
    hashes, rows, records, bad, root = check_bundle(tlog.encode_entry_bundle(leaves), 256, 0, 0)
    assert bad == -1 and len(rows) == 256 and records == []
    assert hashes == b"".join(merkle.leaf_hash(x) for x in leaves)
    assert root == merkle.root_from_concatenated_hashes(hashes)
    assert root == merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    # resumed mid-bundle: the caller has the prefix, so no root
    assert check_bundle(tlog.encode_entry_bundle(leaves), 256, 1, 1)[4] is None


def test_a_bad_record_is_flagged_after_every_leaf_is_hashed() -> None:
    leaves = _leaves()
    leaves[2] = b'{"hello":"world"}'
    hashes, rows, _records, bad, _root = check_bundle(
        tlog.encode_entry_bundle(leaves), len(leaves), 0, 0
    )
    assert bad == 2 and len(rows) == 2
    assert hashes == b"".join(merkle.leaf_hash(x) for x in leaves)


def test_a_malformed_bundle_is_left_to_the_caller() -> None:
    data = tlog.encode_entry_bundle(_leaves())
    assert check_bundle(data[:-1], 6, 0, 0) == (b"", [], [], 0, None)
    assert check_bundle(data, 7, 0, 0) == (b"", [], [], 0, None)


# ---- the shaped path (EntryShapes) gives exactly what checking leaf by leaf gives -------------


def _per_leaf(data: bytes, width: int, offset: int, base: int) -> tuple[Any, ...]:
    """check_bundle as it was before EntryShapes: scan_record and hash_key on every leaf."""
    leaves = tlog.decode_entry_bundle(data, width)[offset:]
    hashes = b"".join(merkle.leaf_hash(x) for x in leaves)
    root = merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    rows: list[Any] = []
    records: list[Any] = []
    for i, leaf in enumerate(leaves):
        try:
            view = scan_record(leaf)
        except ProtocolError:
            return hashes, rows, records, i, root if len(leaves) == 256 else None
        if isinstance(view, EntryView):
            rows.append((base + i, view.id, "entry", hash_key(view.hash.type, view.hash.value),
                         None))
        else:
            rows.append((base + i, view.id, view.type, None, None))
            records.append((base + i, view))
    return hashes, rows, records, -1, root if len(leaves) == 256 else None


_SHAPED = [verify_make_entry("a.example") for _ in range(300)]
_POOL = (_SHAPED + [verify_make_entry("b.example", "md5") for _ in range(20)]
         + [verify_make_revocation(t) for t in _SHAPED[:30]]
         + [verify_make_entry("a.example").replace(b'{"', b'{ "', 1)])  # the last one is invalid


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(_POOL) - 1), min_size=1, max_size=256),
       st.integers(0, 255), st.integers(0, 10**6))
def test_shaped_bundles_give_what_checking_each_leaf_gives(
    picks: list[int], offset: int, base: int
) -> None:
    # mostly one shape (so that the run is checked at once: 300 of the pool's 351), with other
    # shapes, revocations and perhaps the invalid leaf among them, and any resume offset
    leaves = [_POOL[i] for i in picks]
    offset %= len(leaves)
    data = tlog.encode_entry_bundle(leaves)
    assert check_bundle(data, len(leaves), offset, base) == _per_leaf(
        data, len(leaves), offset, base)


def test_a_bundle_of_one_shape_takes_the_shaped_path() -> None:
    from node.federation import prepare

    data = tlog.encode_entry_bundle(_SHAPED[:256])
    check_bundle(data, 256, 0, 0)  # learns the shape
    assert prepare._SHAPES.match_many(_SHAPED[:256]) is not None
    assert check_bundle(data, 256, 0, 0) == _per_leaf(data, 256, 0, 0)

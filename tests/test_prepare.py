"""node.federation.prepare.check_bundle: the worker half of a large sync."""

from __future__ import annotations

import pickle

from test_storage import make_entry, make_revocation

from node.federation.prepare import check_bundle
from node.storage import hash_key
from protocol import merkle
from protocol import tiles as tlog
from protocol.records import encode_record
from protocol.scan import RevocationView


def _leaves() -> list[bytes]:
    entries = [make_entry() for _ in range(5)]
    return [encode_record(e) for e in entries] + [make_revocation(entries[1]).data]


def test_a_valid_bundle_gives_every_hash_and_compact_facts() -> None:
    leaves = _leaves()
    bundle = tlog.encode_entry_bundle(leaves)
    hashes, facts, bad, root = check_bundle(bundle, len(leaves), 0)
    assert bad == -1 and root is None  # not a whole bundle
    assert hashes == b"".join(merkle.leaf_hash(x) for x in leaves)
    assert isinstance(facts[-1], RevocationView)
    for leaf, fact in zip(leaves[:5], facts[:5], strict=True):
        assert isinstance(fact, tuple)
        rec = pickle.loads(pickle.dumps(fact))  # facts cross a process boundary
        assert rec[0] in leaf.decode() and len(rec[1]) == 16
    assert facts[0][1] == hash_key(  # type: ignore[index]
        "sha256", leaves[0].split(b'"value":"')[1][:64].decode()
    )
    # resuming mid-bundle: only the leaves from the offset
    hashes, facts, bad, root = check_bundle(bundle, len(leaves), 4)
    assert (len(hashes), len(facts), bad, root) == (64, 2, -1, None)


def test_a_whole_bundle_comes_with_its_root() -> None:
    leaves = [encode_record(make_entry()) for _ in range(256)]
    hashes, facts, bad, root = check_bundle(tlog.encode_entry_bundle(leaves), 256, 0)
    assert bad == -1 and len(facts) == 256
    assert hashes == b"".join(merkle.leaf_hash(x) for x in leaves)
    assert root == merkle.root_from_concatenated_hashes(hashes)
    assert root == merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    # resumed mid-bundle: the caller has the prefix, so no root
    assert check_bundle(tlog.encode_entry_bundle(leaves), 256, 1)[3] is None


def test_a_bad_record_is_flagged_after_every_leaf_is_hashed() -> None:
    leaves = _leaves()
    leaves[2] = b'{"hello":"world"}'
    hashes, facts, bad, _root = check_bundle(tlog.encode_entry_bundle(leaves), len(leaves), 0)
    assert bad == 2 and len(facts) == 2
    assert hashes == b"".join(merkle.leaf_hash(x) for x in leaves)


def test_a_malformed_bundle_is_left_to_the_caller() -> None:
    data = tlog.encode_entry_bundle(_leaves())
    assert check_bundle(data[:-1], 6, 0) == (b"", [], 0, None)
    assert check_bundle(data, 7, 0) == (b"", [], 0, None)

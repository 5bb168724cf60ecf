"""hashfed's own test vectors (tests/vectors/hashfed): reproducible, and every one verifies.

The vectors are what SPEC.md quotes and what another implementation tests itself against, so two
things must hold: scripts/gen-vectors regenerates them byte for byte (nothing in them is random or
time-dependent), and protocol/ accepts every valid vector and refuses every invalid one exactly as
recorded.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from protocol import merkle
from protocol import tiles as tlog
from protocol.checkpoint import CosignatureVerifier, cosignatures, verify_checkpoint
from protocol.errors import FormatError
from protocol.note import Signer, Verifier
from protocol.records import Entry, Revocation, decode_record, encode_record

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors" / "hashfed"
GENERATOR = ROOT / "scripts" / "gen-vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def all_files(base: Path) -> dict[str, bytes]:
    return {
        p.relative_to(base).as_posix(): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and p.name != "SOURCE.md"
    }


def test_generator_reproduces_committed_vectors(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(GENERATOR), str(tmp_path)], check=True, timeout=120)
    fresh, committed = all_files(tmp_path), all_files(VECTORS)
    assert sorted(fresh) == sorted(committed)
    for name, data in fresh.items():
        assert data == committed[name], f"{name} differs: rerun scripts/gen-vectors"


RECORDS = load("records.json")
INVALID = load("invalid-records.json")


@pytest.mark.parametrize("vector", RECORDS, ids=[v["description"] for v in RECORDS])
def test_valid_record(vector: dict[str, str]) -> None:
    data = vector["json"].encode("utf-8")
    record = decode_record(data)
    assert encode_record(record) == data
    assert merkle.leaf_hash(data).hex() == vector["leaf_hash"]
    assert b"null" not in data  # absent optional fields are omitted, never null


def test_records_cover_every_type_and_hash_type() -> None:
    records = [decode_record(v["json"].encode()) for v in RECORDS]
    assert {r.type for r in records} == {"entry", "revocation", "attestation", "membership"}
    hash_types = {r.hash.type for r in records if isinstance(r, Entry)}
    assert hash_types == {"md5", "sha1", "sha256", "pdq", "photodna", "tmk_pdqf", "vpdq"}


@pytest.mark.parametrize("vector", INVALID, ids=[v["description"] for v in INVALID])
def test_invalid_record(vector: dict[str, Any]) -> None:
    with pytest.raises(FormatError) as info:
        decode_record(vector["json"].encode("utf-8"))
    assert type(info.value).__name__ == vector["error"]
    assert info.value.field == vector["field"]


def test_keys() -> None:
    keys = load("keys.json")
    node = Signer.from_skey(keys["node_skey"])
    assert node.verifier().vkey() == keys["node_vkey"]
    set_verifier = Verifier.from_vkey(keys["set_vkey"])
    # One key pair per node: the set key differs from the node key only in name and key ID.
    assert set_verifier.name == keys["set_origin"] == f"{keys['node_origin']}/known-csam"
    assert set_verifier.public_key == node.verifier().public_key
    assert set_verifier.key_id != node.key_id
    assert keys["set_vkey"].split("+")[2] == keys["node_vkey"].split("+")[2]
    assert node.with_name(keys["set_origin"]).verifier().vkey() == keys["set_vkey"]


def b64list(values: list[str]) -> list[bytes]:
    return [base64.b64decode(v) for v in values]


def test_log() -> None:
    log = load("log.json")
    vkey = Verifier.from_vkey(log["vkey"])
    leaves = [x["json"].encode() for x in log["leaves"]]
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    assert [h.hex() for h in hashes] == [x["leaf_hash"] for x in log["leaves"]]
    for leaf in leaves:
        decode_record(leaf)
    assert isinstance(decode_record(leaves[-1]), Revocation)

    cp = verify_checkpoint(log["checkpoint"].encode(), vkey, origin=log["origin"])
    assert cp.size == log["size"] == len(leaves)
    assert cp.root_hash == base64.b64decode(log["root_hash"])
    assert merkle.root_from_leaf_hashes(hashes) == cp.root_hash
    # The node's own vkey (other name) must not open a set checkpoint.
    with pytest.raises(Exception, match="known key"):
        verify_checkpoint(log["checkpoint"].encode(), Verifier.from_vkey(log["node_vkey"]))

    old = verify_checkpoint(log["old_checkpoint"].encode(), vkey)
    inc = log["inclusion"]
    merkle.verify_inclusion(
        hashes[inc["index"]], inc["index"], inc["size"], b64list(inc["hashes"]), cp.root_hash
    )
    con = log["consistency"]
    assert (con["old"], con["size"]) == (old.size, cp.size)
    merkle.verify_consistency(
        old.size, cp.size, old.root_hash, cp.root_hash, b64list(con["hashes"])
    )

    witness = CosignatureVerifier.from_vkey(log["witness_vkey"])
    cosigned = log["cosigned_checkpoint"].encode()
    verify_checkpoint(cosigned, vkey, witnesses=[witness], quorum=1)
    assert cosignatures(cosigned, [witness]) == {witness.name: log["cosignature_timestamp"]}


def test_export_directory() -> None:
    log = load("log.json")
    export = VECTORS / "export"
    assert (export / "checkpoint").read_text() == log["checkpoint"]
    assert (export / "vkey").read_text() == log["vkey"] + "\n"
    size = log["size"]
    tiles = {
        ref: (export / ref.path()).read_bytes() for ref in tlog.tiles_for_size(size)
    }
    assert {ref.path(): data.hex() for ref, data in tiles.items()} == log["tiles"]
    assert tlog.root_from_tiles(size, tiles) == base64.b64decode(log["root_hash"])
    inc = log["inclusion"]
    assert tlog.inclusion_proof(inc["index"], size, tiles) == b64list(inc["hashes"])
    con = log["consistency"]
    assert tlog.consistency_proof(con["old"], size, tiles) == b64list(con["hashes"])

    bundle = (export / log["entry_bundle"]["path"]).read_bytes()
    assert bundle.hex() == log["entry_bundle"]["hex"]
    entries = tlog.decode_entry_bundle(bundle, size)
    assert entries == [x["json"].encode() for x in log["leaves"]]
    level0 = tlog.tile_hashes(tlog.TileRef(0, 0, size), tiles[tlog.TileRef(0, 0, size)])
    assert level0 == [merkle.leaf_hash(e) for e in entries]

    vkey = Verifier.from_vkey(log["vkey"])
    for note_path in sorted((export / "checkpoints").iterdir()):
        cp = verify_checkpoint(note_path.read_bytes(), vkey)
        assert str(cp.size) == note_path.name


def test_log_audits() -> None:
    from protocol.audit import audit_directory
    from protocol.checkpoint import parse_checkpoint
    from protocol.note import parse_note
    from protocol.verify import verify_log

    log = load("log.json")
    cp = parse_checkpoint(parse_note(log["checkpoint"].encode()).text)
    summary = verify_log([x["json"].encode() for x in log["leaves"]], cp)
    assert (summary.entries, summary.revoked) == (6, 1)
    result = audit_directory(VECTORS / "export", trusted_vkey=log["vkey"])
    assert result.size == log["size"]
    assert sorted(result.older_checkpoints) == ["4", "7"]

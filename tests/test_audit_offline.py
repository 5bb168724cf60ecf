"""protocol.audit: a real tlog-tiles export directory passes, and every kind of tampering is caught.

Each export is written the way a sequencer would: leaves appended in batches, every batch's tiles
and entry bundles written (so stale partial files stay behind), a checkpoint signed after each
batch and the earlier ones kept under checkpoints/.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.process
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from protocol import audit as audit_module
from protocol import merkle, tiles
from protocol.audit import ExportAuditSummary, audit_directory, main
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.equivocation import EquivocationProof, proof_of, verify_equivocation
from protocol.errors import (
    FormatError,
    InconsistentTreeError,
    ProofError,
    SignatureError,
    VerificationError,
)
from protocol.note import Signer
from protocol.records import encode_record, new_nonce, new_record_id, record_from_dict
from protocol.tiles import TILE_WIDTH, TileRef

ORIGIN = "hashfed.example.org/audit"
REPO_ROOT = Path(__file__).resolve().parent.parent


def entry(author: str = "a.example", **extra: Any) -> bytes:
    rid = new_record_id()
    d: dict[str, Any] = {
        "type": "entry",
        "id": rid,
        "author": author,
        "created": "2026-01-02T03:04:05Z",
        "nonce": new_nonce(),
        "hash": {"type": "md5", "value": os.urandom(16).hex()},
        "media": "image",
        "vetting": {"status": "confirmed", "reviews": 1},
        "provenance": {
            "org": author,
            "node": ORIGIN,
            "record": rid,
            "first_seen": "2026-01-01T00:00:00Z",
        },
    }
    d.update(extra)
    return encode_record(record_from_dict(d))


def revocation(target_id: str, value: str, author: str = "a.example") -> bytes:
    d = {
        "type": "revocation",
        "id": new_record_id(),
        "author": author,
        "created": "2026-01-03T00:00:00Z",
        "nonce": new_nonce(),
        "target": target_id,
        "target_hash": {"type": "md5", "value": value},
        "reason": "duplicate",
    }
    return encode_record(record_from_dict(d))


def make_leaves(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    leaves: list[bytes] = []
    live: list[bytes] = []
    for _ in range(n):
        if live and rng.random() < 0.1:
            target = json.loads(live.pop(rng.randrange(len(live))))
            leaves.append(revocation(target["id"], target["hash"]["value"]))
        else:
            leaves.append(entry())
            live.append(leaves[-1])
    return leaves


def checkpoint_of(leaves: list[bytes]) -> Checkpoint:
    root = merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    return Checkpoint(ORIGIN, len(leaves), root)


def write_export(
    root: Path, leaves: list[bytes], signer: Signer, cuts: tuple[int, ...] = ()
) -> Checkpoint:
    """Append ``leaves`` in batches ending at ``cuts`` and at the end, as a log would."""
    size = 0
    edge: dict[TileRef, bytes] = {}
    notes: list[bytes] = []
    for end in [*cuts, len(leaves)]:
        batch = leaves[size:end]
        out = tiles.update_tiles(size, edge, [merkle.leaf_hash(x) for x in batch])
        for ref, data in out.items():
            (root / ref.path()).parent.mkdir(parents=True, exist_ok=True)
            (root / ref.path()).write_bytes(data)
        for n in range(size // TILE_WIDTH, -(-end // TILE_WIDTH)):
            ref = tiles.tile_ref_at(0, n, end, is_entries=True)
            bundle = leaves[n * TILE_WIDTH : n * TILE_WIDTH + ref.width]
            (root / ref.path()).parent.mkdir(parents=True, exist_ok=True)
            (root / ref.path()).write_bytes(tiles.encode_entry_bundle(bundle))
        edge = {r: out.get(r) or edge[r] for r in tiles.right_edge_tiles(end)}
        size = end
        notes.append(sign_checkpoint(checkpoint_of(leaves[:end]), signer))
    (root / "checkpoint").write_bytes(notes[-1])
    (root / "vkey").write_text(signer.verifier().vkey() + "\n")
    if len(notes) > 1:
        (root / "checkpoints").mkdir()
        for i, note in enumerate(notes[:-1]):
            (root / "checkpoints" / f"cp-{i}").write_bytes(note)
    return checkpoint_of(leaves)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture(scope="module")
def leaves() -> list[bytes]:
    return make_leaves(1000)


@pytest.fixture(params=["in process", "workers"])
def scan_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every audit below runs twice: bundles scanned in this process, and by worker processes
    (which large logs use): the results and errors must be the same."""
    if request.param == "workers":
        monkeypatch.setattr(audit_module, "_PARALLEL_MIN_LEAVES", 0)
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
    return str(request.param)


@pytest.fixture
def export(tmp_path: Path, leaves: list[bytes], signer: Signer, scan_mode: str) -> Path:
    root = tmp_path / "export"
    root.mkdir()
    write_export(root, leaves, signer, cuts=(100, 300, 700))
    return root


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


# ---- a good export ------------------------------------------------------------------------------


def test_audit_passes(export: Path, leaves: list[bytes], signer: Signer) -> None:
    s = audit_directory(export)
    assert isinstance(s, ExportAuditSummary)
    cp = checkpoint_of(leaves)
    assert (s.origin, s.size, s.root_hash) == (ORIGIN, 1000, cp.root_hash)
    assert s.entries + s.record_types.get("revocation", 0) == 1000
    assert s.active == s.entries - s.revoked
    assert s.revoked == s.record_types["revocation"] > 0
    assert s.bundles == 4
    assert s.older_checkpoints == ("cp-0", "cp-1", "cp-2")
    assert s.unverified_files == ()
    # the key came from the directory itself, and the summary says so
    assert s.key_source == str(export / "vkey") and not s.key_pinned
    pinned = audit_directory(export, trusted_vkey=signer.verifier().vkey())
    assert pinned.key_pinned and pinned.vkey == signer.verifier().vkey()
    # stale partial tiles from earlier batches were checked too
    assert (export / "tile/0/000.p/100").is_file()
    assert s.hash_tiles > len(tiles.tiles_for_size(1000))


def test_empty_log(tmp_path: Path, signer: Signer) -> None:
    write_export(tmp_path, [], signer)
    s = audit_directory(tmp_path)
    assert (s.size, s.root_hash, s.bundles, s.hash_tiles) == (0, merkle.EMPTY_ROOT, 0, 0)


def test_tiles_beyond_the_checkpoint_are_listed_not_failed(
    export: Path, leaves: list[bytes], signer: Signer
) -> None:
    # The checkpoint is older than the tiles: the log grew from 700 to 1000 leaves after it.
    (export / "checkpoint").write_bytes(sign_checkpoint(checkpoint_of(leaves[:700]), signer))
    s = audit_directory(export)
    assert s.size == 700
    assert s.older_checkpoints == ("cp-0", "cp-1", "cp-2")
    assert set(s.unverified_files) == {
        "tile/entries/002",
        "tile/entries/003.p/232",
        "tile/0/002",
        "tile/0/003.p/232",
        "tile/1/000.p/3",
    }


# ---- tampering ----------------------------------------------------------------------------------


def test_pinned_key_rejects_another_key(export: Path) -> None:
    other = Signer.generate(ORIGIN)
    with pytest.raises(SignatureError, match=r"checkpoint"):
        audit_directory(export, trusted_vkey=other.verifier().vkey())


def test_checkpoint_signed_by_another_key(export: Path, leaves: list[bytes]) -> None:
    other = Signer.generate(ORIGIN)
    (export / "checkpoint").write_bytes(sign_checkpoint(checkpoint_of(leaves), other))
    with pytest.raises(SignatureError, match=r"checkpoint"):
        audit_directory(export)


def test_flipped_byte_in_checkpoint_text(export: Path) -> None:
    note = (export / "checkpoint").read_bytes()
    root_line_start = note.index(b"\n", note.index(b"\n") + 1) + 1
    flip(export / "checkpoint", root_line_start + 3, 0x02)
    with pytest.raises(SignatureError, match=r"export/checkpoint"):
        audit_directory(export)


def test_flipped_byte_in_entry_bundle_breaks_a_record(export: Path) -> None:
    flip(export / "tile/entries/001", 2)  # the first record's opening brace
    with pytest.raises(FormatError, match=r"leaf 256 .*tile/entries/001") as e:
        audit_directory(export)
    assert e.value.field == "index 256"


def test_flipped_hash_digit_in_entry_bundle(export: Path) -> None:
    # A change that keeps the record valid is caught by the root; the tiles point at the leaf.
    path = export / "tile/entries/002"
    data = path.read_bytes()
    value_at = data.index(b'"value":"') + len(b'"value":"')
    digit = data[value_at : value_at + 1]
    path.write_bytes(data[:value_at] + (b"1" if digit != b"1" else b"2") + data[value_at + 1 :])
    with pytest.raises(ProofError, match=r"not the checkpoint's root.*tile/entries/002") as e:
        audit_directory(export)
    assert "leaf 512" in str(e.value)


@pytest.mark.parametrize("tile", ["tile/0/001", "tile/0/003.p/232", "tile/1/000.p/3"])
def test_flipped_byte_in_hash_tile(export: Path, tile: str) -> None:
    flip(export / tile, 33)
    with pytest.raises(ProofError, match=f"hash tile {re.escape(tile)} does not match"):
        audit_directory(export)


def test_flipped_byte_in_stale_partial_tile(export: Path) -> None:
    flip(export / "tile/0/001.p/44", 5)
    with pytest.raises(ProofError, match=r"tile/0/001.p/44"):
        audit_directory(export)


def test_stale_partial_bundle_that_differs(export: Path) -> None:
    flip(export / "tile/entries/000.p/100", 50)
    with pytest.raises(ProofError, match=r"entry bundle tile/entries/000.p/100 does not match"):
        audit_directory(export)


def test_missing_bundle(export: Path) -> None:
    (export / "tile/entries/001").unlink()
    with pytest.raises(FormatError, match=r"entry bundle tile/entries/001 is missing"):
        audit_directory(export)


def test_missing_hash_tile(export: Path) -> None:
    (export / "tile/0/002").unlink()
    with pytest.raises(FormatError, match=r"hash tile tile/0/002 is missing"):
        audit_directory(export)


def test_extra_trailing_bytes(export: Path) -> None:
    bundle = export / "tile/entries/000"
    bundle.write_bytes(bundle.read_bytes() + b"\x00")
    with pytest.raises(FormatError, match=r"tile/entries/000.*trailing bytes"):
        audit_directory(export)


def test_extra_trailing_bytes_in_hash_tile(export: Path) -> None:
    tile = export / "tile/0/000"
    tile.write_bytes(tile.read_bytes() + b"\x00")
    with pytest.raises(FormatError, match=r"hash tile tile/0/000 is 8193 bytes"):
        audit_directory(export)


def test_unexpected_file(export: Path) -> None:
    (export / "tile/0/notes.txt").write_text("hi")
    with pytest.raises(FormatError, match=r"unexpected file tile/0/notes.txt"):
        audit_directory(export)


def test_non_canonical_record(tmp_path: Path, signer: Signer, scan_mode: str) -> None:
    leaves = make_leaves(300)
    leaves[270] = leaves[270].replace(b'{"', b'{ "', 1)  # still valid JSON, not canonical
    write_export(tmp_path, leaves, signer)
    with pytest.raises(FormatError, match=r"leaf 270 .*canonical.*tile/entries/001") as e:
        audit_directory(tmp_path)
    assert e.value.field == "index 270"


def test_truncated_log(export: Path, leaves: list[bytes], signer: Signer) -> None:
    longer = [*leaves, entry(), entry()]
    (export / "checkpoint").write_bytes(sign_checkpoint(checkpoint_of(longer), signer))
    with pytest.raises(FormatError, match=r"tile/entries/003.p/234 is missing.*less than"):
        audit_directory(export)


@pytest.mark.parametrize("size", [300, 256, 1])
def test_older_checkpoint_fork(
    export: Path, leaves: list[bytes], signer: Signer, size: int
) -> None:
    """A smaller older checkpoint that is not a prefix: refused, and the error carries the
    larger tree's path, so the pair is an equivocation proof anyone can check (a power-of-two
    size needs the first subtree's hash too)."""
    forked = [*leaves[: size - 1], entry()]
    note = sign_checkpoint(checkpoint_of(forked), signer)
    (export / "checkpoints" / "cp-1").write_bytes(note)
    with pytest.raises(InconsistentTreeError, match=rf"fork.*cp-1.*size {size}\b") as e:
        audit_directory(export)
    assert e.value.evidence == (note, (export / "checkpoint").read_bytes())
    proof = proof_of(e.value)
    assert proof is not None and proof.consistency_proof
    verify_equivocation(proof, signer.verifier())
    verify_equivocation(EquivocationProof.from_json(proof.to_json()), signer.verifier())


def test_older_checkpoint_same_size_fork(
    export: Path, leaves: list[bytes], signer: Signer
) -> None:
    note = sign_checkpoint(checkpoint_of([*leaves[:999], entry()]), signer)
    (export / "checkpoints" / "same").write_bytes(note)
    with pytest.raises(InconsistentTreeError, match=r"fork.*size 1000.*same") as e:
        audit_directory(export)
    assert e.value.evidence[0] == note
    proof = proof_of(e.value)  # the two notes alone
    assert proof is not None and proof.consistency_proof == ()
    verify_equivocation(proof, signer.verifier())


def test_older_checkpoint_bigger_is_rollback(
    export: Path, leaves: list[bytes], signer: Signer
) -> None:
    note = sign_checkpoint(checkpoint_of([*leaves, entry()]), signer)
    (export / "checkpoints" / "newer").write_bytes(note)
    with pytest.raises(InconsistentTreeError, match=r"rollback.*newer") as e:
        audit_directory(export)
    assert len(e.value.evidence) == 2
    assert proof_of(e.value) is None  # both notes may be true: no proof of a lie


def test_older_checkpoint_from_another_key(export: Path, leaves: list[bytes]) -> None:
    note = sign_checkpoint(checkpoint_of(leaves[:10]), Signer.generate(ORIGIN))
    (export / "checkpoints" / "alien").write_bytes(note)
    with pytest.raises(SignatureError, match=r"checkpoints/alien"):
        audit_directory(export)


def test_revocation_of_unknown_entry(tmp_path: Path, signer: Signer, scan_mode: str) -> None:
    leaves = make_leaves(20)
    leaves.append(revocation(new_record_id(), os.urandom(16).hex()))
    write_export(tmp_path, leaves, signer)
    with pytest.raises(VerificationError, match=r"leaf 20 .*not an earlier entry") as e:
        audit_directory(tmp_path)
    assert e.value.field == "index 20"


def test_errors_come_in_index_order(export: Path) -> None:
    # A bad record in bundle 1 and a missing bundle 3: workers run ahead, the report does not.
    flip(export / "tile/entries/001", 2)
    (export / "tile/entries/003.p/232").unlink()
    with pytest.raises(FormatError, match=r"leaf 256 .*tile/entries/001") as e:
        audit_directory(export)
    assert e.value.field == "index 256"


def test_duplicate_id_in_a_later_bundle(tmp_path: Path, signer: Signer, scan_mode: str) -> None:
    leaves = make_leaves(600)
    first = json.loads(leaves[5])
    leaves[300] = entry(id=first["id"])  # bundle 1 repeats an id of bundle 0
    write_export(tmp_path, leaves, signer)
    with pytest.raises(VerificationError, match=rf"leaf 300 .*{first['id']} was already used"):
        audit_directory(tmp_path)


def test_workers_of_a_failed_audit_exit_by_themselves(
    tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed audit stops reading early. Its workers must see their pipes close and exit, not
    # wait until they are killed (they held copies of the parent's ends: 5 s each, then SIGTERM).
    monkeypatch.setattr(audit_module, "_PARALLEL_MIN_LEAVES", 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    terminated: list[int | None] = []
    real_terminate = multiprocessing.process.BaseProcess.terminate

    def spy(self: multiprocessing.process.BaseProcess) -> None:
        terminated.append(self.pid)
        real_terminate(self)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "terminate", spy)
    leaves = make_leaves(2000)
    leaves[300] = entry(id=json.loads(leaves[5])["id"])
    write_export(tmp_path, leaves, signer)
    with pytest.raises(VerificationError, match="leaf 300"):
        audit_directory(tmp_path)
    assert terminated == []
    assert multiprocessing.active_children() == []


def test_author_role_checked_across_bundles(
    tmp_path: Path, signer: Signer, scan_mode: str
) -> None:
    leaves = [entry(author="a.example") for _ in range(300)]
    target = json.loads(leaves[7])
    value = target["hash"]["value"]
    leaves.append(revocation(target["id"], value, author="a.example"))  # fine: its author
    leaves.extend(entry(author="b.example") for _ in range(3))
    other = json.loads(leaves[8])
    leaves.append(revocation(other["id"], other["hash"]["value"], author="b.example"))
    write_export(tmp_path, leaves, signer)
    with pytest.raises(VerificationError, match=r"leaf 304 .*author role, but b.example") as e:
        audit_directory(tmp_path)
    assert e.value.field == "index 304"
    write_export(tmp_path, leaves[:304], signer)
    assert audit_directory(tmp_path).revoked == 1


# ---- command line -------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protocol.audit", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_files_are_read_whole_with_exact_errors(tmp_path: Path) -> None:
    read = audit_module._read
    big = os.urandom(3 * 1024 * 1024 + 7)  # more than one read's worth after the first
    for name, data in (("empty", b""), ("small", b"x"), ("big", big)):
        (tmp_path / name).write_bytes(data)
        assert read(tmp_path / name, "tile") == data
        assert read(str(tmp_path / name), "tile") == data
    with pytest.raises(FormatError, match=r"tile .*gone is missing"):
        read(tmp_path / "gone", "tile")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FormatError, match=r"cannot read tile .*folder"):
        read(tmp_path / "folder", "tile")


_IMPORTS_PYDANTIC = """
import sys
from pathlib import Path
from protocol.audit import audit_directory
try:
    audit_directory(Path(sys.argv[1]))
    outcome = "pass"
except Exception as e:
    outcome = type(e).__name__
print(outcome, "pydantic" in sys.modules)
"""


def test_a_clean_log_is_audited_without_pydantic(
    tmp_path: Path, leaves: list[bytes], signer: Signer
) -> None:
    # Importing pydantic and building the record models costs ~0.2 s of every audit; a clean
    # log needs neither (the records are checked by protocol.scan). A record the fast path
    # refuses goes to the reference decoder, which does import it.
    def run(root: Path) -> str:
        out = subprocess.run([sys.executable, "-c", _IMPORTS_PYDANTIC, str(root)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120, check=True)
        return out.stdout.strip()

    for name in ("clean", "bad"):
        (tmp_path / name).mkdir()
    write_export(tmp_path / "clean", leaves, signer)
    assert run(tmp_path / "clean") == "pass False"
    bad = list(leaves)
    bad[10] = bad[10].replace(b'{"author"', b'{ "author"')  # not canonical
    write_export(tmp_path / "bad", bad, signer)
    assert run(tmp_path / "bad") == "FormatError True"


def test_cli_exit_codes(export: Path, tmp_path: Path) -> None:
    ok = run_cli(str(export))
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout and "NOT PINNED" in ok.stdout and "size 1000" in ok.stdout
    as_json = run_cli(str(export), "--json")
    assert as_json.returncode == 0
    body = json.loads(as_json.stdout)
    assert body["ok"] is True and body["summary"]["size"] == 1000
    assert body["summary"]["key_pinned"] is False

    flip(export / "tile/0/001", 33)
    bad = run_cli(str(export))
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "ProofError" in bad.stdout and "tile/0/001" in bad.stdout
    bad_json = run_cli(str(export), "--json")
    assert bad_json.returncode == 1
    assert json.loads(bad_json.stdout)["error"]["type"] == "ProofError"

    assert run_cli(str(tmp_path / "nowhere")).returncode == 2
    assert run_cli().returncode == 2
    assert run_cli(str(export), "--vkey", "not-a-key").returncode == 2


def test_main_in_process(export: Path, signer: Signer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(export), "--vkey", signer.verifier().vkey()]) == 0
    assert "pinned by the caller" in capsys.readouterr().out
    note = sign_checkpoint(checkpoint_of(make_leaves(5)), signer)
    (export / "checkpoints" / "x").write_bytes(note)
    assert main([str(export), "--json"]) == 1
    err = json.loads(capsys.readouterr().out)["error"]
    assert err["type"] == "InconsistentTreeError" and len(err["evidence"]) == 2



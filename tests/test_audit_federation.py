"""The offline audit of a re-shared set, on real federation data (issue 5).

One coordinator-admitted federation A -> B (the e2e setup of tests/test_federation_e2e.py) is
built once per module; B re-shares A's green set. Exports are taken with ``hashfed export`` at
the interesting moments, then audited offline with ``python -m protocol.audit`` and ``hashfed
audit``: receipts back to A, authors' membership at each record's time, and the propagation of
A's revocations into B (``--upstream``), passing, and failing by record index when tampered.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_federation_e2e import checkpointed, federation, setup_chain, sha256_item

from node import cli
from node.config import load_config, load_signer
from node.federation import reshare
from node.federation.sync import sync_once
from protocol.audit import audit_directory
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.equivocation import proof_of, verify_equivocation
from protocol.errors import FormatError, InconsistentTreeError, ProofError, VerificationError
from protocol.note import Verifier
from protocol.receipts import Receipt
from protocol.verify import verify_checkpoint_note

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Scenario:
    a_vkey: str
    b_vkey: str
    coord_vkey: str
    exports: dict[str, Path]
    #: upstream (A) record ids by name, and B's index of its copy of each
    a_ids: dict[str, str]
    b_index: dict[str, int]
    #: the coordinator's data directory (its key signs the forged members checkpoint)
    coord_data: Path


async def _export(node: Any, name: str, out: Path) -> Path:
    """``hashfed export`` of ``name`` from the node's data directory (a second process' view)."""
    argv = ["export", "--data", str(node.service.cfg.data_dir), "--set", name, "--out", str(out)]
    status = await asyncio.to_thread(cli.main, argv)
    assert status == 0
    return out


async def _build(tmp: Path) -> Scenario:
    exports: dict[str, Path] = {}
    async with federation(tmp) as (coord, a, b, c):
        await setup_chain(a, b, c)
        items = [sha256_item() for _ in range(4)]
        async with a.client() as op:
            published = await op.publish("green", items[:3])
        a_ids = {f"x{i}": p.record_id for i, p in enumerate(published)}
        await checkpointed(a, "green")
        assert (await sync_once(b.service, "org-a.test:green")).appended == 3
        await checkpointed(b, "green")

        # A revokes x0 (A's leaf 3); B exported before it syncs, A after.
        async with a.client() as op:
            await op.revoke("green", entry_id=a_ids["x0"], reason="false_positive")
        await checkpointed(a, "green")
        exports["a_after"] = await _export(a, "green", tmp / "exp" / "a_after")
        exports["b_before"] = await _export(b, "green", tmp / "exp" / "b_before")
        await sync_once(b.service, "org-a.test:green")
        await checkpointed(b, "green")
        exports["b_after"] = await _export(b, "green", tmp / "exp" / "b_after")

        # A publishes x3 and revokes x1 (A's leaves 4, 5); B's re-sharer drops revocations, so it
        # re-shares x3 with a receipt at A's size 6 but never revokes its copy of x1.
        async with a.client() as op:
            (p3,) = await op.publish("green", items[3:])
            a_ids["x3"] = p3.record_id
            await op.revoke("green", entry_id=a_ids["x1"], reason="quality")
        await checkpointed(a, "green")

        async def dropped(self: Any, upstream: Any) -> None:
            return None

        original = reshare._Pass.revocation
        reshare._Pass.revocation = dropped  # type: ignore[method-assign]
        try:
            await sync_once(b.service, "org-a.test:green")
        finally:
            reshare._Pass.revocation = original  # type: ignore[method-assign]
        await checkpointed(b, "green")
        exports["a_later"] = await _export(a, "green", tmp / "exp" / "a_later")
        exports["b_dropped"] = await _export(b, "green", tmp / "exp" / "b_dropped")

        b_index: dict[str, int] = {}
        for name, exp in (("b_dropped", exports["b_dropped"]),):
            for receipt_file in (exp / "receipts").iterdir():
                r = Receipt.from_json(receipt_file.read_bytes())
                rid = json.loads(r.leaf)["id"]
                b_index[next(k for k, v in a_ids.items() if v == rid)] = int(
                    receipt_file.name.removesuffix(".json")
                )
            assert name

        # The coordinator suspends B, yet B publishes: that record's author is no longer an
        # authorised member at its time. B (no longer served by the coordinator) exports its stale
        # members/ mirror; the auditor takes the members log from the coordinator's own export.
        # Timestamps have second precision and a change in the same second counts as before the
        # record: a new second keeps B's earlier records clearly before the suspension.
        await asyncio.sleep(1.1)
        async with coord.client() as op:
            await op.post_json("/v1/members", {"action": "suspend", "member": b.org})
        await checkpointed(coord, "members")
        async with b.client() as op:
            await op.publish("green", [sha256_item()])
        await checkpointed(b, "green")
        exports["b_suspended"] = await _export(b, "green", tmp / "exp" / "b_suspended")
        exports["coord_members"] = await _export(coord, "members", tmp / "exp" / "coord_members")
        return Scenario(a.vkey, b.vkey, coord.vkey, exports, a_ids, b_index,
                        coord.service.cfg.data_dir)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return asyncio.run(_build(tmp_path_factory.mktemp("fed")))


@pytest.fixture
def copy(scenario: Scenario, tmp_path: Path) -> Iterator[Any]:
    def make(name: str) -> Path:
        return Path(shutil.copytree(scenario.exports[name], tmp_path / name))

    yield make


def _audit(s: Scenario, root: Path, *upstream: Path) -> Any:
    return audit_directory(
        root, trusted_vkey=s.b_vkey, upstream_vkeys=[s.a_vkey], members_vkey=s.coord_vkey,
        upstream_dirs=list(upstream),
    )


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protocol.audit", *map(str, args), "--json"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
    )


# -- receipts and membership -------------------------------------------------------------------


def test_reshare_set_audits_back_to_a_with_members(scenario: Scenario) -> None:
    s = scenario
    proc = _cli(s.exports["b_after"], "--vkey", s.b_vkey, "--upstream-vkey", s.a_vkey,
                "--members-vkey", s.coord_vkey)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert summary["size"] == 4 and summary["receipts"] == 3
    assert summary["members_checked"] == 4
    assert "re-share receipts" in summary["checks"] and "membership" in summary["checks"]
    # A's set vkey works as well as A's node vkey.
    a_set = (s.exports["a_after"] / "vkey").read_text().strip()
    assert _audit_ok(s, s.exports["b_after"], upstream_vkey=a_set).receipts == 3


def _audit_ok(s: Scenario, root: Path, *, upstream_vkey: str) -> Any:
    return audit_directory(root, trusted_vkey=s.b_vkey, upstream_vkeys=[upstream_vkey],
                           members_vkey=s.coord_vkey)


def test_receipt_with_a_flipped_proof_byte_fails_naming_the_index(
    scenario: Scenario, copy: Any
) -> None:
    root = copy("b_after")
    path = root / "receipts" / "1.json"
    value = json.loads(path.read_bytes())
    proof = bytearray(__import__("base64").b64decode(value["proof"][0]))
    proof[0] ^= 1
    value["proof"][0] = __import__("base64").b64encode(bytes(proof)).decode()
    path.write_text(json.dumps(value))
    with pytest.raises(ProofError) as info:
        _audit(scenario, root)
    assert info.value.field == "index 1"
    assert "receipt 1.json" in info.value.message


def test_swapped_receipt_fails_naming_the_index(scenario: Scenario, copy: Any) -> None:
    root = copy("b_after")
    shutil.copy(root / "receipts" / "0.json", root / "receipts" / "2.json")
    with pytest.raises(VerificationError) as info:
        _audit(scenario, root)
    assert info.value.field == "index 2"
    assert "hop 0" in info.value.message


def test_missing_receipt_of_a_reshared_entry_fails(scenario: Scenario, copy: Any) -> None:
    root = copy("b_after")
    (root / "receipts" / "1.json").unlink()
    with pytest.raises(VerificationError) as info:
        _audit(scenario, root)
    assert info.value.field == "index 1" and "no receipt" in info.value.message


def test_tampered_members_log_fails(scenario: Scenario, copy: Any) -> None:
    root = copy("b_after")
    bundle = next(p for p in (root / "members" / "tile" / "entries").rglob("*") if p.is_file())
    data = bundle.read_bytes()
    pos = data.index(b'"org-b.test"')
    bundle.write_bytes(data[:pos] + b'"org-x.test"' + data[pos + 12:])
    with pytest.raises(ProofError) as info:
        _audit(scenario, root)
    assert "members/" in info.value.message and "leaf" in info.value.message


def test_author_suspended_at_its_record_time_fails_naming_the_index(
    scenario: Scenario, copy: Any
) -> None:
    root = copy("b_suspended")
    # With the exporter's stale mirror of the members log the suspension is not visible ...
    assert _audit(scenario, root).members_checked == 6
    # ... with the coordinator's own export of it, record 5 is by a suspended member.
    shutil.rmtree(root / "members")
    shutil.copytree(scenario.exports["coord_members"], root / "members")
    with pytest.raises(VerificationError) as info:
        _audit(scenario, root)
    assert info.value.field == "index 5"
    assert "org-b.test was not an authorised member" in info.value.message


def test_the_coordinators_own_members_log_overrides_a_stale_members_copy(
    scenario: Scenario, copy: Any
) -> None:
    """--members: the auditor's own export of the coordinator's log replaces the exporter's
    copy, which must be a prefix of it; the summary says which log (and size) was used."""
    s = scenario
    root, fresh = copy("b_suspended"), s.exports["coord_members"]
    stale = _audit(s, root)
    assert stale.members_source == "members/"
    with pytest.raises(VerificationError) as info:
        audit_directory(root, trusted_vkey=s.b_vkey, upstream_vkeys=[s.a_vkey],
                        members_vkey=s.coord_vkey, members_dir=fresh)
    assert info.value.field == "index 5"
    proc = _cli(root, "--vkey", s.b_vkey, "--upstream-vkey", s.a_vkey,
                "--members-vkey", s.coord_vkey, "--members", fresh)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"]["field"] == "index 5"
    # A members log older than the export's own copy is refused: it would hide suspensions.
    older = root / "members"
    newer = Path(shutil.copytree(root, root.parent / "b_suspended_fresh_members"))
    shutil.rmtree(newer / "members")
    shutil.copytree(fresh, newer / "members")
    with pytest.raises(VerificationError, match="older than the export's members/"):
        audit_directory(newer, trusted_vkey=s.b_vkey, upstream_vkeys=[s.a_vkey],
                        members_vkey=s.coord_vkey, members_dir=older)
    # A members/ that forks from the given log (the coordinator signed another root for the
    # stale size): refused, with a proof of the coordinator's equivocation.
    forked = Path(shutil.copytree(root, root.parent / "b_suspended_forked_members"))
    stale_cp = verify_checkpoint_note((forked / "members" / "checkpoint").read_bytes(),
                                      Verifier.from_vkey((forked / "members" / "vkey")
                                                         .read_text().strip()))
    log = load_signer(load_config(s.coord_data)).with_name(stale_cp.origin)
    (forked / "members" / "checkpoint").write_bytes(
        sign_checkpoint(Checkpoint(stale_cp.origin, stale_cp.size, b"\7" * 32), log)
    )
    with pytest.raises(InconsistentTreeError, match="not a prefix") as fork:
        audit_directory(forked, trusted_vkey=s.b_vkey, upstream_vkeys=[s.a_vkey],
                        members_vkey=s.coord_vkey, members_dir=fresh)
    proof = proof_of(fork.value)
    assert proof is not None and proof.consistency_proof
    verify_equivocation(proof, log.verifier())
    # The same log as members/ is a prefix of itself: the audit runs, saying where it came from.
    ok = copy("b_after")
    summary = audit_directory(ok, trusted_vkey=s.b_vkey, upstream_vkeys=[s.a_vkey],
                              members_vkey=s.coord_vkey, members_dir=ok / "members")
    assert summary.members_source == str(ok / "members")
    assert summary.members_size == _audit(s, ok).members_size > 0


# -- upstream revocations ----------------------------------------------------------------------


def test_propagated_revocation_passes(scenario: Scenario) -> None:
    s = scenario
    summary = _audit(s, s.exports["b_after"], s.exports["a_after"])
    assert "upstream revocations" in summary.checks
    assert summary.upstream_revocations == 1 and summary.upstream_revocations_newer == 0
    proc = _cli(s.exports["b_after"], "--vkey", s.b_vkey, "--upstream-vkey", s.a_vkey,
                "--members-vkey", s.coord_vkey, "--upstream", s.exports["a_after"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["summary"]["upstream_revocations"] == 1


def test_revocation_newer_than_the_adopted_checkpoint_is_not_counted(scenario: Scenario) -> None:
    # B exported before it synced A's revocation: B's receipts hold A's checkpoint of size 3,
    # the revocation is A's leaf 3, so B could not have seen it yet.
    s = scenario
    summary = _audit(s, s.exports["b_before"], s.exports["a_after"])
    assert summary.upstream_revocations == 0 and summary.upstream_revocations_newer == 1


def test_dropped_revocation_fails_naming_both_indices(scenario: Scenario) -> None:
    s = scenario
    with pytest.raises(VerificationError) as info:
        _audit(s, s.exports["b_dropped"], s.exports["a_later"])
    e = info.value
    b1 = s.b_index["x1"]
    assert e.field == f"index {b1}"
    assert "revocation at leaf 5 of node-a.test/green" in e.message
    assert s.a_ids["x1"] in e.message
    proc = _cli(s.exports["b_dropped"], "--vkey", s.b_vkey, "--upstream-vkey", s.a_vkey,
                "--members-vkey", s.coord_vkey, "--upstream", s.exports["a_later"])
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"]["field"] == f"index {b1}"


def test_upstream_export_older_than_the_receipts_is_refused(scenario: Scenario) -> None:
    s = scenario
    with pytest.raises(VerificationError) as info:
        _audit(s, s.exports["b_dropped"], s.exports["a_after"])
    assert "older" in info.value.message


def test_hashfed_audit_report_lists_the_checks(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = scenario
    capsys.readouterr()
    status = cli.main([
        "audit", "--export", str(s.exports["b_after"]), "--vkey", s.b_vkey,
        "--upstream-vkey", s.a_vkey, "--members-vkey", s.coord_vkey,
        "--upstream", str(s.exports["a_after"]), "--report", str(tmp_path / "rep"),
    ])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "3 re-share receipts verified" in out
    assert "1 upstream revocations propagated" in out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["summary"]["upstream_revocations"] == 1
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "upstream revocations" in page


def test_malformed_members_record_is_named_as_a_members_record(
    scenario: Scenario, copy: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy("b_after")
    bundle = next(p for p in (root / "members" / "tile" / "entries").rglob("*") if p.is_file())
    data = bundle.read_bytes()
    pos = data.index(b'"type":"membership"', data.index(b'"type":"membership"') + 1)  # leaf 1
    bundle.write_bytes(data[:pos] + b'"type":"membershiq"' + data[pos + 19:])
    with pytest.raises(FormatError) as info:
        _audit(scenario, root)
    assert info.value.field == "members/index 1"
    s = scenario
    capsys.readouterr()
    status = cli.main(["audit", "--export", str(root), "--vkey", s.b_vkey, "--upstream-vkey",
                       s.a_vkey, "--members-vkey", s.coord_vkey, "--report", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert status == 1 and "members/ record 1:" in out
    (failure,) = json.loads((tmp_path / "r" / "report.json").read_text())["failures"]
    assert failure["index"] is None and failure["other_index"] == 1


def test_hashfed_audit_names_the_record_missing_a_revocation(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = scenario
    capsys.readouterr()
    status = cli.main([
        "audit", "--export", str(s.exports["b_dropped"]), "--vkey", s.b_vkey,
        "--upstream-vkey", s.a_vkey, "--members-vkey", s.coord_vkey,
        "--upstream", str(s.exports["a_later"]), "--report", str(tmp_path / "rep"),
    ])
    out = capsys.readouterr().out
    assert status == 1
    assert f"record {s.b_index['x1']}: VerificationError" in out
    (failure,) = json.loads((tmp_path / "rep" / "report.json").read_text())["failures"]
    assert failure["index"] == s.b_index["x1"] and "leaf 5 of node-a.test/green" in failure[
        "message"]
    assert "upstream revocation at leaf 5" in (tmp_path / "rep" / "report.html").read_text()


def test_upstream_without_receipts_is_refused(scenario: Scenario) -> None:
    s = scenario
    with pytest.raises(FormatError) as info:
        audit_directory(s.exports["a_after"], trusted_vkey=s.a_vkey,
                        upstream_dirs=[s.exports["a_after"]])
    assert info.value.field == "upstream"

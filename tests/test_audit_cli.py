"""`hashfed audit`: export and live audits, report.json/html, tampering named by index, evidence."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from nodeutil import make_node_dir, running_node

from node import cli
from node.audit_report import build_report, print_report, render_html
from node.config import load_config, load_signer
from node.storage.sql import SqlStore
from protocol import merkle
from protocol.audit import ExportAuditSummary
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.note import Signer, Verifier
from protocol.tiles import TileRef

ORIGIN = "audit.example/node"
ORG = "example.org"
REPO = Path(__file__).resolve().parent.parent


def _jsonl(n: int, label: str = "ic:A1") -> bytes:
    return b"".join(
        json.dumps({"hash_type": "sha256", "hash_value": os.urandom(32).hex(),
                    "labels": [label]}).encode() + b"\n"
        for _ in range(n)
    )


def _main(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return status, out, err


@pytest.fixture
def exported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path, str]:
    """A node with set demo published in two batches (two checkpoints), exported."""
    for name in list(os.environ):
        if name.startswith("HASHFED_"):
            monkeypatch.delenv(name)
    data = tmp_path / "node"
    assert _main(capsys, "init", "--data", data, "--origin", ORIGIN, "--org", ORG)[0] == 0
    assert _main(capsys, "set", "create", "demo", "--tlp", "clear", "--data", data)[0] == 0
    for i, n in enumerate((300, 40)):
        src = tmp_path / f"b{i}.jsonl"
        src.write_bytes(_jsonl(n))
        assert _main(capsys, "publish", "--data", data, "--set", "demo", src)[0] == 0
    out = tmp_path / "export"
    assert _main(capsys, "export", "--data", data, "--set", "demo", "--out", out)[0] == 0
    status, vkey, _ = _main(capsys, "vkey", "--data", data)
    assert status == 0
    return data, out, vkey.strip().splitlines()[-1].strip()


def test_export_audit_passes_with_older_checkpoints_and_writes_reports(
    exported: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _data, out, vkey = exported
    assert len(list((out / "checkpoints").iterdir())) == 1  # the size-300 checkpoint
    status, text, err = _main(
        capsys, "audit", "--export", out, "--vkey", vkey, "--report", tmp_path / "rep"
    )
    assert status == 0, text + err
    assert "PASS" in text and "pinned by the caller" in text
    assert "older checkpoints" in text and f"{ORIGIN}/demo" in text
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["ok"] is True and report["summary"]["size"] == 340
    assert report["summary"]["labels"] == {"ic:A1": 340}
    assert report["summary"]["older_checkpoints"] == ["000000000300"]
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")

    # Without --vkey the key comes from the directory, and the summary says so.
    status, text, _ = _main(capsys, "audit", "--export", out)
    assert status == 0 and "NOT PINNED" in text


def test_a_forked_older_checkpoint_fails_and_the_report_holds_an_offline_proof(
    exported: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node signed another size-300 root besides the one its 340-leaf tree extends: the
    audit fails, and --report writes equivocation.json, which the protocol package alone
    confirms with the log's key."""
    data, out, _vkey = exported
    log = load_signer(load_config(data)).with_name(f"{ORIGIN}/demo")
    other = sign_checkpoint(Checkpoint(f"{ORIGIN}/demo", 300, merkle.leaf_hash(b"other")), log)
    (out / "checkpoints" / "000000000300").write_bytes(other)
    status, text, _ = _main(capsys, "audit", "--export", out, "--report", tmp_path / "rep")
    assert status == 1 and "fork" in text
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    (failure,) = report["failures"]
    assert failure["equivocation_proof"]["consistency_proof"]  # two sizes: the path is there
    log_vkey = (out / "vkey").read_text().strip()
    proc = subprocess.run(
        [sys.executable, "-m", "protocol.audit", "--equivocation",
         str(tmp_path / "rep" / "equivocation.json"), "--vkey", log_vkey, "--json"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["equivocation"] is True
    # the protocol package's own audit prints the same proof
    proc = subprocess.run(
        [sys.executable, "-m", "protocol.audit", str(out), "--json"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=60,
    )
    assert proc.returncode == 1
    error = json.loads(proc.stdout)["error"]
    assert error["equivocation_proof"] == failure["equivocation_proof"]


def test_tampered_record_fails_naming_its_index(
    exported: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _data, out, vkey = exported
    bundle = out / TileRef(0, 1, 84, is_entries=True).path()
    data = bundle.read_bytes()
    # Leaf 256 + 5: same length, so the bundle framing stays valid and only the record is bad.
    pos = -1
    for _ in range(6):
        pos = data.index(b'"type":"entry"', pos + 1)
    bundle.write_bytes(data[:pos] + b'"type":"entrx"' + data[pos + 14:])
    status, text, _ = _main(
        capsys, "audit", "--export", out, "--vkey", vkey, "--report", tmp_path / "rep"
    )
    assert status == 1
    assert "FAIL" in text and "record 261:" in text
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["ok"] is False
    (failure,) = report["failures"]
    assert failure["index"] == 261 and failure["type"] == "FormatError"
    assert "261" in (tmp_path / "rep" / "report.html").read_text()


def test_html_escapes_record_strings() -> None:
    evil = "<script>alert(1)</script>"
    summary = ExportAuditSummary(
        origin=f"x.example/{evil}", size=1, root_hash=bytes(32),
        labels=MappingProxyType({evil: 1}), authors=MappingProxyType({evil: 1}),
        key_source="pinned", vkey=evil, checks=("records",),
    )
    page = render_html(build_report(evil, summary))
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    buf = io.StringIO()
    print_report(build_report(evil, summary), buf)  # not a TTY: plain text
    assert "PASS" in buf.getvalue()


async def test_live_audit_of_a_running_node(tmp_path: Path) -> None:
    async with running_node(tmp_path / "a", origin="live.example") as node:
        async with node.client() as client:
            await client.create_set("open", "clear")
            await client.publish("open", [
                {"hash_type": "sha256", "hash_value": os.urandom(32).hex()} for _ in range(270)
            ])
            deadline = time.monotonic() + 10  # the sequencer signs shortly after
            while (await client.get_json("/v1/sets/open"))["size"] != 270:
                assert time.monotonic() < deadline, "no checkpoint of size 270 within 10 s"
                await asyncio.sleep(0.05)
        args = cli.parse_args(["audit", "--url", node.url, "--set", "open", "--vkey", node.vkey,
                               "--report", str(tmp_path / "rep")])
        assert await args.func(args) == 0
        report = json.loads((tmp_path / "rep" / "report.json").read_text())
        assert report["summary"]["size"] == 270 and report["summary"]["key_pinned"]
        assert report["summary"]["origin"] == "live.example/open"
        # A wrong pinned key fails.
        other = Signer.generate("live.example").verifier().vkey()
        args = cli.parse_args(["audit", "--url", node.url, "--set", "open", "--vkey", other])
        assert await args.func(args) == 1


async def _checkpointed(client: Any, name: str, size: int) -> None:
    for _ in range(200):  # the checkpoint is signed by the sequencer, shortly after
        if (await client.get_json(f"/v1/sets/{name}"))["size"] == size:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"set {name} never reached size {size}")


async def _audit_main(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``hashfed audit ...`` through main (the CLI error mapping) off the server's event loop."""
    capsys.readouterr()
    status = await asyncio.to_thread(cli.main, ["audit", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return status, out, err


async def test_live_audit_of_an_amber_set_signs_as_the_data_dir_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HASHFED_DATA", raising=False)
    # B has a grant on the amber set, C is a member without one, D is a node A does not know.
    b, c, d = [
        await make_node_dir(tmp_path / n, origin=f"node-{n}.test", org=f"org-{n}.test")
        for n in "bcd"
    ]
    async with running_node(tmp_path / "a", origin="node-a.test", org="org-a.test") as node:
        async with node.client() as client:
            for cfg in (b, c):  # A is its own coordinator: admitting makes a members set
                await client.post_json("/v1/members", {
                    "action": "admit", "member": cfg.org, "name": cfg.org,
                    "node_url": "http://127.0.0.1:9", "roles": ["subscriber"],
                    "vkeys": [load_signer(cfg).verifier().vkey()],
                })
            for name, tlp, n in (("amb", "amber", 37), ("pub", "clear", 3)):
                await client.create_set(name, tlp)
                await client.publish(name, [
                    {"hash_type": "sha256", "hash_value": os.urandom(32).hex()} for _ in range(n)
                ])
                await _checkpointed(client, name, n)
        grant = cli.parse_args(["set", "grant", "amb", "--org", b.org, "--data",
                                str(node.data_dir)])
        assert await grant.func(grant) == 0

        url = ["--url", node.url, "--set", "amb"]
        status, out, err = await _audit_main(capsys, *url)
        assert status == 1 and out == ""
        (line,) = err.strip().splitlines()
        assert "set amb is not readable by an unsigned caller" in line
        assert "HTTP 401" in line and "--data DIR" in line

        status, out, err = await _audit_main(
            capsys, *url, "--data", b.data_dir, "--vkey", node.vkey, "--report", tmp_path / "rep"
        )
        assert status == 0, out + err
        assert "PASS" in out
        report = json.loads((tmp_path / "rep" / "report.json").read_text())
        assert report["summary"]["size"] == 37 and report["summary"]["key_pinned"]
        assert report["summary"]["origin"] == "node-a.test/amb"

        for cfg, code in ((c, "HTTP 403"), (d, "HTTP 401")):
            status, out, err = await _audit_main(capsys, *url, "--data", cfg.data_dir)
            assert status == 1 and out == ""
            (line,) = err.strip().splitlines()
            assert f"set amb is not readable by the node {cfg.origin}" in line, line
            assert code in line and "--data DIR" in line

        # A clear set is fetched unsigned, as sync does: a node A does not know still audits it
        # (signed, A would refuse D's unknown key), also with the data dir from $HASHFED_DATA.
        monkeypatch.setenv("HASHFED_DATA", str(d.data_dir))
        status, out, err = await _audit_main(capsys, "--url", node.url, "--set", "pub")
        assert status == 0 and "PASS" in out, out + err
        # ... and the key is only loaded when needed: a broken $HASHFED_DATA does not matter
        monkeypatch.setenv("HASHFED_DATA", str(tmp_path / "no-such-node"))
        status, out, err = await _audit_main(capsys, "--url", node.url, "--set", "pub")
        assert status == 0 and "PASS" in out, out + err


async def test_evidence_rows_become_equivocation_proofs(tmp_path: Path) -> None:
    async with running_node(tmp_path / "a", origin="ev.example") as node:
        partner = Signer.generate("partner.example/set")
        notes = [
            sign_checkpoint(Checkpoint(partner.name, 5, merkle.leaf_hash(bytes([i]))), partner)
            for i in range(2)
        ]
        store = await SqlStore.open(load_config(node.data_dir).database_url)
        try:
            await store.add_evidence(partner.name, "fork", "two roots for size 5", notes[0],
                                     notes[1])
        finally:
            await store.close()
        out = tmp_path / "evidence"
        args = cli.parse_args(["audit", "--evidence", str(out), "--data", str(node.data_dir)])
        assert await args.func(args) == 0
    (proof_file,) = out.glob("*.json")
    proc = subprocess.run(
        [sys.executable, "-m", "protocol.audit", "--equivocation", str(proof_file),
         "--vkey", partner.verifier().vkey()],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert isinstance(Verifier.from_vkey(partner.verifier().vkey()), Verifier)


def test_parallel_record_checks_give_identical_results(
    exported: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from protocol import audit
    from protocol.errors import FormatError

    _data, out, _vkey = exported
    monkeypatch.setattr(audit, "_PARALLEL_MIN_LEAVES", 0)
    one = audit.audit_directory(out, workers=1)
    two = audit.audit_directory(out, workers=2)
    assert one.as_dict() == two.as_dict()
    bundle = out / TileRef(0, 0, 256, is_entries=True).path()
    data = bundle.read_bytes()
    pos = data.index(b'"type":"entry"', data.index(b'"type":"entry"') + 1)  # leaf 1
    bundle.write_bytes(data[:pos] + b'"type":"entrx"' + data[pos + 14:])
    errors = []
    for workers in (1, 2):
        with pytest.raises(FormatError) as info:
            audit.audit_directory(out, workers=workers)
        errors.append((info.value.message, info.value.field))
    assert errors[0] == errors[1] and errors[0][1] == "index 1"

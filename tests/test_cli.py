"""Tests of the `hashfed` command line, as real processes on real SQLite and PostgreSQL databases.

The end-to-end paths start `python -m node.cli` as a subprocess, exactly as an operator's script
would, so exit statuses, stdout/stderr separation and "no traceback, ever" are tested for real.
Narrower checks (chunking, argument errors) call ``main(argv)`` in-process where that is cleaner.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from node import cli
from node.config import KEY_FILE, SERVE_FILE, TOKEN_FILE, create_data_dir
from node.sequencer import Sequencer
from protocol import tiles as tlog
from protocol.checkpoint import verify_checkpoint
from protocol.note import Verifier

REPO_ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "test.example/node"
ORG = "example.org"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHFED_")}
    env.update(extra or {})
    return env


def hashfed(
    *args: str | Path, input: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter, as an operator would."""
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", *map(str, args)],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=_env(env),
        timeout=180,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def ok(*args: str | Path, input: bytes | None = None) -> str:
    proc = hashfed(*args, input=input)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def fails(status: int, *args: str | Path, input: bytes | None = None) -> str:
    """Run a command that must fail with ``status`` and exactly one line on stderr."""
    proc = hashfed(*args, input=input)
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


class InProcess:
    """``main(argv)`` in this process, with stdin/stdout/stderr captured: fast narrow checks."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self._capsys = capsys
        self._monkeypatch = monkeypatch

    def __call__(self, *args: str | Path, input: bytes | None = None) -> tuple[int, str, str]:
        if input is not None:
            stdin = io.TextIOWrapper(io.BytesIO(input))
            self._monkeypatch.setattr(sys, "stdin", stdin)
        self._capsys.readouterr()
        status = cli.main([str(a) for a in args])
        out, err = self._capsys.readouterr()
        assert "Traceback" not in err, err
        return status, out, err

    def ok(self, *args: str | Path, input: bytes | None = None) -> str:
        status, out, err = self(*args, input=input)
        assert status == 0, err
        return out

    def fails(self, status: int, *args: str | Path, input: bytes | None = None) -> str:
        got, out, err = self(*args, input=input)
        assert got == status, (got, out, err)
        assert out == ""
        lines = err.splitlines()
        assert len(lines) == 1, err
        return lines[0]

    def lookup(self, data: Path, value: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(
            self.ok("lookup", "--data", data, "--hash-type", "sha256", "--hash-value", value)
        )
        return out


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> InProcess:
    for name in list(os.environ):
        if name.startswith("HASHFED_") and name != "HASHFED_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    return InProcess(capsys, monkeypatch)


def sha256s(n: int) -> list[str]:
    return [os.urandom(32).hex() for _ in range(n)]


def jsonl(values: Sequence[str], **extra: Any) -> bytes:
    return b"".join(
        json.dumps({"hash_type": "sha256", "hash_value": v, **extra}).encode() + b"\n"
        for v in values
    )


def lookup(data: Path, value: str, hash_type: str = "sha256") -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        ok("lookup", "--data", data, "--hash-type", hash_type, "--hash-value", value)
    )
    return out


def set_sizes(data: Path) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in json.loads(ok("set", "list", "--data", data, "--json"))}


@pytest.fixture
def node(tmp_path: Path, database_url: str, run: InProcess) -> Path:
    """An initialised node on the backend under test, with a TLP:CLEAR set "demo"."""
    data = tmp_path / "node"
    run.ok("init", "--data", data, "--origin", ORIGIN, "--org", ORG, "--database", database_url)
    run.ok("set", "create", "demo", "--tlp", "clear", "--data", data)
    return data


@pytest.fixture
def sqlite_node(tmp_path: Path, run: InProcess) -> Path:
    data = tmp_path / "node"
    run.ok("init", "--data", data, "--origin", ORIGIN, "--org", ORG)
    run.ok("set", "create", "demo", "--tlp", "clear", "--data", data)
    return data


def test_init_prints_vkey_token_and_next_step(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "fresh"
    out = ok("init", "--data", data, "--origin", ORIGIN, "--org", ORG, "--database", database_url)
    vkey = ok("vkey", "--data", data).strip()
    Verifier.from_vkey(vkey)
    assert vkey.startswith(ORIGIN + "+")
    assert vkey in out
    assert str(data / TOKEN_FILE) in out
    assert f"hashfed serve --data {data}" in out
    # Secrets are private from the first byte; the directory too.
    assert (data / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert (data / TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o777 == 0o700


def test_init_refuses_an_existing_node(sqlite_node: Path) -> None:
    key_before = (sqlite_node / KEY_FILE).read_bytes()
    line = fails(2, "init", "--data", sqlite_node, "--origin", "other.example", "--org", ORG)
    assert "already holds a hashfed node" in line
    assert (sqlite_node / KEY_FILE).read_bytes() == key_before


def test_full_path_init_publish_lookup_revoke_export(tmp_path: Path, database_url: str) -> None:
    """init -> set create -> publish -> lookup -> revoke -> lookup -> export, each a process."""
    node = tmp_path / "node"
    ok("init", "--data", node, "--origin", ORIGIN, "--org", ORG, "--database", database_url)
    ok("set", "create", "demo", "--tlp", "clear", "--data", node)
    values = sha256s(40)
    src = tmp_path / "batch.jsonl"
    src.write_bytes(jsonl(values, labels=["ic:A1"], source_ref="case-1"))

    out = ok("publish", "--data", node, "--set", "demo", src)
    assert out.strip() == "published 40 new entries (0 duplicates) to demo; log size 40"
    # The same file again adds nothing: entries are idempotent per active hash.
    out = ok("publish", "--data", node, "--set", "demo", src)
    assert out.strip() == "published 0 new entries (40 duplicates) to demo; log size 40"

    found = lookup(node, values[3].upper())  # upper-case hex from people is folded
    assert found["hash_type"] == "sha256" and found["hash_value"] == values[3]
    (match,) = found["matches"]
    assert match["set"] == "demo" and match["origin"] == f"{ORIGIN}/demo"
    assert match["index"] == 3 and match["state"] == "active"
    assert "revocation" not in match
    record = match["record"]
    assert record["hash"] == {"type": "sha256", "value": values[3]}
    assert record["labels"] == ["ic:A1"]
    assert record["provenance"]["org"] == ORG and record["provenance"]["source_ref"] == "case-1"

    out = ok(
        "revoke", "--data", node, "--set", "demo", "--hash-type", "sha256",
        "--hash-value", values[3], "--reason", "false_positive", "--text", "not abuse",
    )  # fmt: skip
    assert "index 40" in out
    (match,) = lookup(node, values[3])["matches"]
    assert match["state"] == "revoked"
    assert match["revocation"]["reason"] == "false_positive"
    assert match["revocation"]["target"] == record["id"]
    assert match["revocation"]["text"] == "not abuse"

    other = lookup(node, values[5])["matches"][0]["record"]["id"]
    ok("revoke", "--data", node, "--set", "demo", "--entry", other, "--reason", "quality")
    assert lookup(node, values[5])["matches"][0]["state"] == "revoked"
    line = fails(
        1, "revoke", "--data", node, "--set", "demo", "--entry", other, "--reason", "quality"
    )
    assert "already revoked" in line

    info = set_sizes(node)["demo"]
    assert (info["size"], info["active"], info["revoked"]) == (42, 38, 2)

    out_dir = tmp_path / "export"
    out = ok("export", "--data", node, "--set", "demo", "--out", out_dir)
    assert "tree size 42" in out
    verifier = Verifier.from_vkey((out_dir / "vkey").read_text().strip())
    cp = verify_checkpoint((out_dir / "checkpoint").read_bytes(), verifier)
    assert cp.size == 42 and cp.origin == f"{ORIGIN}/demo"
    tiles = {ref: (out_dir / ref.path()).read_bytes() for ref in tlog.tiles_for_size(cp.size)}
    assert tlog.root_from_tiles(cp.size, tiles) == cp.root_hash
    bundle = (out_dir / tlog.TileRef(0, 0, 42, is_entries=True).path()).read_bytes()
    leaves = tlog.decode_entry_bundle(bundle, 42)
    assert json.loads(leaves[3])["id"] == record["id"]


def test_a_bad_line_publishes_nothing_and_names_the_line(
    node: Path, tmp_path: Path, run: InProcess
) -> None:
    values = sha256s(6)
    lines = jsonl(values).splitlines(keepends=True)
    lines[2] = b'{"hash_type": "sha256", "hash_value": "abc"}\n'  # line 3: wrong length
    lines[4] = b"{not json\n"  # line 5
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"".join(lines))
    status, out, err = run("publish", "--data", node, "--set", "demo", src)
    assert status == 1 and out == ""
    assert err.startswith("error: 2 bad line(s); nothing was published")
    assert "line 3:" in err and "line 5:" in err and "line 1:" not in err
    assert run.lookup(node, values[0])["matches"] == []
    status, out, err = run("set", "list", "--data", node, "--json")
    assert json.loads(out)[0]["size"] == 0


def test_csv_file_and_stdin(node: Path, tmp_path: Path, run: InProcess) -> None:
    a, b, c, d = sha256s(4)
    src = tmp_path / "batch.csv"
    src.write_text(
        "hash_type,hash_value,labels,media\n"
        f"sha256,{a},ic:A1;x:y,image\n"
        f"sha256,{b},,\n"
    )
    out = run.ok("publish", "--data", node, "--set", "demo", src)
    assert "published 2 new entries" in out
    assert run.lookup(node, a)["matches"][0]["record"]["labels"] == ["ic:A1", "x:y"]

    out = run.ok("publish", "--data", node, "--set", "demo", "-", input=jsonl([c]))
    assert "published 1 new entries (0 duplicates) to demo; log size 3" in out
    csv_in = f"hash_type,hash_value\nsha256,{d}\nsha256,{a}\n".encode()
    out = run.ok("publish", "--data", node, "--set", "demo", "--format", "csv", "-", input=csv_in)
    assert "published 1 new entries (1 duplicates) to demo; log size 4" in out
    assert run.lookup(node, d)["matches"][0]["index"] == 3

    bad_csv = f"hash_type,hash_value\nsha256,{c}\nsha256,zz\n".encode()
    status, _, err = run("publish", "--data", node, "--set", "demo", "-", input=bad_csv)
    assert status == 1 and "line 3:" in err


def test_lookup_without_matches_exits_zero(sqlite_node: Path, run: InProcess) -> None:
    (value,) = sha256s(1)
    assert run.lookup(sqlite_node, value) == {
        "hash_type": "sha256",
        "hash_value": value,
        "matches": [],
    }


def test_errors_print_one_line_without_traceback(
    sqlite_node: Path, tmp_path: Path, run: InProcess
) -> None:
    data = sqlite_node
    (value,) = sha256s(1)
    src = tmp_path / "one.jsonl"
    src.write_bytes(jsonl([value]))
    # Two as real processes: what an operator's script sees.
    assert "no set" in fails(1, "publish", "--data", data, "--set", "nope", src)
    assert "not a hashfed node" in fails(2, "set", "list", "--data", tmp_path / "empty")
    fails_ = run.fails
    assert "cannot read" in fails_(1, "publish", "--data", data, "--set", "demo", tmp_path / "x")
    assert "unknown hash type" in fails_(
        1, "lookup", "--data", data, "--hash-type", "sha257", "--hash-value", value
    )
    assert "TLP" in fails_(1, "set", "create", "s2", "--tlp", "purple", "--data", data)
    assert "set name" in fails_(1, "set", "create", "Bad Name", "--tlp", "red", "--data", data)
    assert fails_(1, "set", "create", "demo", "--tlp", "red", "--data", data).startswith("error:")
    assert "no active" in fails_(
        1, "revoke", "--data", data, "--set", "demo", "--hash-type", "sha256",
        "--hash-value", value, "--reason", "quality",
    )  # fmt: skip
    assert "no record" in fails_(
        1, "revoke", "--data", data, "--set", "demo", "--entry", "0" * 32, "--reason", "quality"
    )
    assert "no set" in fails_(1, "export", "--data", data, "--set", "nope", "--out", tmp_path)
    assert "not a hashfed node" in fails_(2, "vkey", "--data", tmp_path / "empty")
    (data / KEY_FILE).chmod(0o644)
    assert "chmod 600" in fails_(2, "vkey", "--data", data)


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["publish", "--set", "demo", "f"],  # no --data and no HASHFED_DATA
        ["revoke", "--data", str(tmp_path), "--set", "demo", "--reason", "quality"],
        ["revoke", "--data", str(tmp_path), "--set", "d", "--reason", "quality", "--entry", "x",
         "--hash-type", "md5", "--hash-value", "00"],
        ["revoke", "--data", str(tmp_path), "--set", "d", "--reason", "quality",
         "--hash-type", "md5"],
        ["revoke", "--data", str(tmp_path), "--set", "d", "--reason", "because", "--entry", "x"],
        ["publish", "--data", str(tmp_path), "--set", "d", "--format", "xml", "f"],
        ["frobnicate"],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2, argv
    assert "Traceback" not in capsys.readouterr().err


def test_data_dir_from_environment(
    tmp_path: Path, run: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "envnode"
    monkeypatch.setenv("HASHFED_DATA", str(data))
    run.ok("init", "--origin", ORIGIN, "--org", ORG)
    run.ok("set", "create", "demo", "--tlp", "green")
    header, row = run.ok("set", "list").splitlines()
    assert header.split() == ["name", "tlp", "size", "active", "revoked", "origin"]
    assert row.split() == ["demo", "TLP:GREEN", "0", "0", "0", f"{ORIGIN}/demo"]
    # The flag wins over the environment.
    assert "not a hashfed node" in run.fails(2, "vkey", "--data", tmp_path / "nothing")


def test_version() -> None:
    assert ok("version").startswith("hashfed 0.")


def test_serve_refuses_outdated_schema_until_db_upgrade(
    tmp_path: Path, free_port: int, run: InProcess
) -> None:
    data = tmp_path / "node"
    # A data directory whose database was never migrated (as after a hashfed upgrade).
    create_data_dir(data, origin=ORIGIN, org=ORG, database_url=None, listen="127.0.0.1:1")
    line = fails(2, "serve", "--data", data, "--listen", f"127.0.0.1:{free_port}")
    assert "hashfed db upgrade" in line
    assert "hashfed db upgrade" in run.fails(2, "set", "list", "--data", data)
    assert "revision" in run.ok("db", "upgrade", "--data", data)
    run.ok("db", "upgrade", "--data", data)  # idempotent
    assert run.ok("set", "list", "--data", data, "--json").strip() == "[]"


def test_publish_is_chunked(
    sqlite_node: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: InProcess
) -> None:
    """Pass 2 of a direct import never hands more than IMPORT_CHUNK entries at once (bounded
    memory)."""
    sizes: list[int] = []
    real = Sequencer.append

    async def spy(self: Sequencer, set_name: str, items: Any) -> Any:
        sizes.append(len(items))
        return await real(self, set_name, items)

    monkeypatch.setattr(cli, "IMPORT_CHUNK", 7)
    monkeypatch.setattr(Sequencer, "append", spy)
    src = tmp_path / "b.jsonl"
    src.write_bytes(jsonl(sha256s(50)))
    out = run.ok("publish", "--data", sqlite_node, "--set", "demo", src)
    assert sizes == [7] * 7 + [1]
    assert "published 50 new entries (0 duplicates) to demo; log size 50" in out


# -- through a running `hashfed serve` ------------------------------------------------------------


@pytest.fixture
def served(node: Path, free_port: int) -> Iterator[tuple[Path, subprocess.Popen[bytes], str]]:
    """`hashfed serve` running on the node, with its URL; stopped (SIGTERM) if a test did not."""
    log = (node.parent / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "serve", "--data", str(node),
         "--listen", f"127.0.0.1:{free_port}"],
        cwd=REPO_ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = _wait_until_serving(node, proc)
        yield node, proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _wait_until_serving(data: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (data.parent / "serve.log").read_text()
            raise AssertionError(f"hashfed serve exited with {proc.returncode}:\n{log}")
        try:
            url = str(json.loads((data / SERVE_FILE).read_text())["url"])
            with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return url
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError("hashfed serve did not become healthy within 60 s")


def test_publish_through_running_server(
    served: tuple[Path, subprocess.Popen[bytes], str],
    tmp_path: Path,
    free_port: int,
    run: InProcess,
) -> None:
    """The server is a real process; after the first publish the CLI runs in-process (faster)."""
    data, proc, url = served
    assert url == f"http://127.0.0.1:{free_port}"
    values = sha256s(30)
    src = tmp_path / "batch.jsonl"
    src.write_bytes(jsonl(values))

    out = ok("publish", "--data", data, "--set", "demo", src)
    assert out.strip() == "published 30 new entries (0 duplicates) to demo; log size 30"
    out = run.ok("publish", "--data", data, "--set", "demo", "-", input=jsonl(values[:10]))
    assert out.strip() == "published 0 new entries (10 duplicates) to demo; log size 30"
    out = run.ok("set", "create", "second", "--tlp", "amber", "--data", data)
    assert out.startswith("created set second (TLP:AMBER")
    run.ok("publish", "--data", data, "--set", "second", "-", input=jsonl(values[:5]))
    run.ok(
        "revoke", "--data", data, "--set", "demo", "--hash-type", "sha256",
        "--hash-value", values[0], "--reason", "duplicate",
    )  # fmt: skip
    assert run.lookup(data, values[0])["matches"][0]["state"] == "revoked"
    assert {m["set"] for m in run.lookup(data, values[1])["matches"]} == {"demo", "second"}
    # A bad file is refused before anything reaches the server.
    assert "line 1:" in run("publish", "--data", data, "--set", "demo", "-", input=b"{}\n")[2]

    # Proof that writes went through the server: with the wrong token the server refuses them.
    token = (data / TOKEN_FILE).read_text()
    (data / TOKEN_FILE).write_text("wrong-token\n")
    line = run.fails(1, "publish", "--data", data, "--set", "demo", src)
    assert line.startswith("error:")
    (data / TOKEN_FILE).write_text(token)
    assert "no set" in run.fails(1, "publish", "--data", data, "--set", "nope", src)
    # serve refuses a second server on the same data directory.
    assert "already running" in run.fails(2, "serve", "--data", data, "--listen", "127.0.0.1:0")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not (data / SERVE_FILE).exists()
    log = (data.parent / "serve.log").read_text()
    assert "Traceback" not in log
    assert f"serving {url}: origin {ORIGIN}, sets: demo" in log

    # The final checkpoints cover everything written through the server.
    sets = {s["name"]: s for s in json.loads(run.ok("set", "list", "--data", data, "--json"))}
    assert sets["demo"]["size"] == 31 and sets["second"]["size"] == 5
    for name, size in (("demo", 31), ("second", 5)):
        out_dir = tmp_path / f"export-{name}"
        run.ok("export", "--data", data, "--set", name, "--out", out_dir)
        verifier = Verifier.from_vkey((out_dir / "vkey").read_text().strip())
        assert verify_checkpoint((out_dir / "checkpoint").read_bytes(), verifier).size == size
    # With the server gone, the CLI writes directly again.
    out = run.ok("publish", "--data", data, "--set", "demo", "-", input=jsonl(sha256s(1)))
    assert "log size 32" in out


@pytest.mark.slow
def test_publish_large_file_streams(sqlite_node: Path) -> None:
    """A 30,000-line file (6 chunks) from stdin: pass 1 and 2 stream, nothing held whole."""
    values = sha256s(30_000)
    out = ok("publish", "--data", sqlite_node, "--set", "demo", "-", input=jsonl(values))
    assert out.strip() == "published 30000 new entries (0 duplicates) to demo; log size 30000"
    assert lookup(sqlite_node, values[-1])["matches"][0]["index"] == 29_999

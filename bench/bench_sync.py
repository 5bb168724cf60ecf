"""Bootstrap sync over loopback: a fresh subscriber mirrors an N-entry set, vs. the floor.

Ours:  `hashfed subscribe` + `hashfed sync --once` in a subprocess of a fresh node, against a
       real `hashfed serve` of a node holding N entries (built once and cached, see
       bench_serve.py): every checkpoint, tile and bundle fetched over HTTP and verified before it
       is stored in SQLite.
       Peak RSS of the syncing process is reported (os.wait4).
Floor: in this process, the same leaf bytes (read from the publisher's database beforehand):
       orjson parse + SHA-256 leaf hash + sqlite3 executemany into one table, one transaction.

    .venv/bin/python bench/bench_sync.py --entries 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_serve import build, free_port, wait_ready  # noqa: E402

HASHFED = [sys.executable, "-m", "node.cli"]


def leaves_of(data: Path) -> list[bytes]:
    """Every leaf of the publisher, in order: from its record, or (since migration 0006, where
    the record holds no bytes) from its full entry bundle."""
    from protocol.tiles import decode_entry_bundle

    con = sqlite3.connect(data / "node.db")
    out: list[bytes] = []
    bundle: tuple[tuple[int, int], list[bytes]] = ((-1, -1), [])
    rows = con.execute("SELECT set_id, idx, data FROM records ORDER BY set_id, idx")
    for set_id, idx, leaf in rows:
        if leaf is None:
            key = (set_id, idx // 256)
            if bundle[0] != key:
                (blob,) = con.execute(
                    "SELECT data FROM bundles WHERE set_id = ? AND n = ?", key
                ).fetchone()
                bundle = (key, decode_entry_bundle(bytes(blob), 256))
            leaf = bundle[1][idx % 256]
        out.append(bytes(leaf))
    con.close()
    return out


def floor(leaves: list[bytes], db: Path) -> float:
    start = time.perf_counter()
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE leaves (idx INTEGER PRIMARY KEY, hash BLOB, data BLOB)")

    def rows() -> Iterator[tuple[int, bytes, bytes]]:
        for i, leaf in enumerate(leaves):
            orjson.loads(leaf)
            yield i, hashlib.sha256(b"\x00" + leaf).digest(), leaf

    with con:
        con.executemany("INSERT INTO leaves VALUES (?, ?, ?)", rows())
    con.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--tlp", default="clear", choices=["clear", "amber"],
                        help="amber: the set is granted to the subscriber, whose every request "
                             "is signed (RFC 9421) and checked: key, nonce, grants")
    args = parser.parse_args()
    suffix = "" if args.tlp == "clear" else f"-{args.tlp}"
    data = args.cache / f"hashfed-bench-serve-{args.entries}{suffix}"
    if not (data / "hashfed.toml").exists():
        print(f"building a node with {args.entries:,} entries in {data} (cached) ...")
        asyncio.run(build(data, args.entries, args.tlp))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([*HASHFED, "db", "upgrade", "--data", str(data)], env=env, check=True,
                   capture_output=True)
    port = free_port()
    server = subprocess.Popen([*HASHFED, "serve", "--data", str(data), "--listen",
                               f"127.0.0.1:{port}"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", server)
        with tempfile.TemporaryDirectory(prefix="hashfed-bench-sync-") as tmp:
            work = Path(tmp)
            sub = work / "subscriber"
            subprocess.run([*HASHFED, "init", "--data", str(sub), "--origin", "sub.example",
                            "--org", "sub.example"], env=env, check=True, capture_output=True)
            vkey = subprocess.run([*HASHFED, "vkey", "--data", str(data)], env=env, check=True,
                                  capture_output=True, text=True).stdout.strip()
            if args.tlp != "clear":
                # each side pins the other; the publisher grants the set to the subscriber
                sub_vkey = subprocess.run([*HASHFED, "vkey", "--data", str(sub)], env=env,
                                          check=True, capture_output=True,
                                          text=True).stdout.strip()
                for cmd in (
                    ["trust", "partner", "--data", str(data), "--org", "sub.example", "--url",
                     "http://127.0.0.1:9", "--vkey", sub_vkey],
                    ["set", "grant", "--data", str(data), "bench", "--org", "sub.example"],
                    ["trust", "partner", "--data", str(sub), "--org", "bench.example", "--url",
                     f"http://127.0.0.1:{port}", "--vkey", vkey],
                ):
                    subprocess.run([*HASHFED, *cmd], env=env, check=True, capture_output=True)
            subprocess.run([*HASHFED, "subscribe", "--data", str(sub), "--url",
                            f"http://127.0.0.1:{port}", "--set", "bench", "--vkey", vkey],
                           env=env, check=True, capture_output=True)
            start = time.perf_counter()
            proc = subprocess.Popen([*HASHFED, "sync", "--data", str(sub), "--once"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
            ours = time.perf_counter() - start
            if os.waitstatus_to_exitcode(status) != 0:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"sync failed: {err}")
            # Only now load the leaves for the floor: a child forked while this process held
            # them would report their pages in its peak RSS.
            leaves = leaves_of(data)
            f = floor(leaves, work / "floor.db")
            n = len(leaves)
            print(f"{n:,} entries ({args.tlp.upper()}): floor {n / f:,.0f}/s (no HTTP), "
                  f"hashfed sync {n / ours:,.0f}/s "
                  f"({ours:.1f} s), ratio {f / ours:.2f} (goal >= 0.5); peak RSS of the sync "
                  f"process {usage.ru_maxrss / 1024:.0f} MiB (goal < 300)")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
